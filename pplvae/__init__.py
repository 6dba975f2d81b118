"""pplvae: variational autoencoders written as Pyro model/guide pairs.

Importing pplvae turns on Pyro's module-local parameters
(``pyro.settings.set(module_local_params=True)``): each ``PyroModule`` keeps its
own parameters, as a ``torch.nn.Module`` does, instead of sharing them by name
through Pyro's global parameter store. Two models in one process then never
share weights, and ``state_dict()``, ``.to(device)`` and ``torch.optim`` just work.
"""

import pyro

pyro.settings.set(module_local_params=True)

from pplvae.ais import AISResult, BDMCResult, annealed_importance_sampling, bidirectional_monte_carlo  # noqa: E402
from pplvae.data import DataNotFoundError, ImageData, load_dataset  # noqa: E402
from pplvae.fast_log_prob import FastLogProbMessenger  # noqa: E402
from pplvae.marginal import MarginalLikelihood, log_marginal_likelihood  # noqa: E402
from pplvae.models import (  # noqa: E402
    CVAE,
    HVAE,
    MODELS,
    VAE,
    CVAEConfig,
    HVAEConfig,
    IAFConfig,
    IAFVAE,
    VAEConfig,
    VampPriorConfig,
    VampPriorVAE,
    build_model,
)
from pplvae.objectives import OBJECTIVES, kl_warmup_weight, make_objective, mmd, scale_latents  # noqa: E402
from pplvae.runs import CheckpointError, Run, RunLockedError, load_checkpoint, load_run, save_checkpoint  # noqa: E402
from pplvae.trace_elbo import FastTrace_ELBO  # noqa: E402
from pplvae.training import NegativeELBO, NonFiniteLossError, TrainConfig, Trainer, fit  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "AISResult",
    "BDMCResult",
    "CVAE",
    "CVAEConfig",
    "CheckpointError",
    "DataNotFoundError",
    "FastLogProbMessenger",
    "FastTrace_ELBO",
    "HVAE",
    "HVAEConfig",
    "IAFConfig",
    "IAFVAE",
    "ImageData",
    "MODELS",
    "MarginalLikelihood",
    "OBJECTIVES",
    "NegativeELBO",
    "NonFiniteLossError",
    "Run",
    "RunLockedError",
    "TrainConfig",
    "Trainer",
    "VAE",
    "VAEConfig",
    "VampPriorConfig",
    "VampPriorVAE",
    "annealed_importance_sampling",
    "bidirectional_monte_carlo",
    "build_model",
    "fit",
    "kl_warmup_weight",
    "load_checkpoint",
    "load_dataset",
    "load_run",
    "log_marginal_likelihood",
    "make_objective",
    "mmd",
    "save_checkpoint",
    "scale_latents",
]
