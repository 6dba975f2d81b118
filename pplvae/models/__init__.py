"""Model/guide pairs, by name."""

from __future__ import annotations

from dataclasses import asdict, is_dataclass

from pplvae.models.cvae import CVAE, CVAEConfig
from pplvae.models.hvae import HVAE, HVAEConfig
from pplvae.models.iaf import IAFVAE, IAFConfig
from pplvae.models.protocol import ImageModel, ModelGuidePair, check_model_guide
from pplvae.models.vae import VAE, VAEConfig
from pplvae.models.vampprior import VampPriorConfig, VampPriorVAE

#: Model classes by the name the command line and saved configs use.
MODELS = {cls.name: cls for cls in (VAE, CVAE, HVAE, VampPriorVAE, IAFVAE)}


def build_model(name: str, **config) -> VAE:
    """Build a model by name from its config fields (as saved in a run's ``config.json``).

    Raises:
        ValueError: an unknown model name, or a config the model rejects.
    """
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; choose one of {', '.join(MODELS)}.")
    cls = MODELS[name]
    return cls(cls.config_class(**config))


def model_config(model) -> dict:
    """A model's config as a JSON-ready dict with its ``name``: the class name and no sizes for a model
    without ``name`` or a dataclass ``config`` (a user's own pair)."""
    config = getattr(model, "config", None)
    sizes = asdict(config) if is_dataclass(config) and not isinstance(config, type) else {}
    return {"name": getattr(model, "name", type(model).__name__), **sizes}


__all__ = [
    "CVAE",
    "CVAEConfig",
    "HVAE",
    "HVAEConfig",
    "IAFConfig",
    "IAFVAE",
    "ImageModel",
    "MODELS",
    "ModelGuidePair",
    "VAE",
    "VAEConfig",
    "VampPriorConfig",
    "VampPriorVAE",
    "build_model",
    "check_model_guide",
    "model_config",
]
