"""What :func:`pplvae.fit` needs of a model, what pictures and the command line may use, and the check of a pair.

:func:`pplvae.fit` trains any :class:`ModelGuidePair`: an object with
``model`` and ``guide`` methods (Pyro programs taking the same arguments) and
``parameters()``, i.e. a ``torch.nn.Module`` or ``PyroModule``. Nothing else is
required. The built-in models also provide the optional parts of
:class:`ImageModel`; where a model lacks one, the pictures that need it are
skipped, never a crash.
"""

from __future__ import annotations

from typing import Any, Iterator, Protocol, runtime_checkable

import pyro  # noqa: F401  (the examples)
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

__all__ = ["ImageModel", "ModelGuidePair", "check_model_guide"]


@runtime_checkable
class ModelGuidePair(Protocol):
    """The contract of :func:`pplvae.fit`: ``model(*args, **kwargs)``, ``guide(*args, **kwargs)``, ``parameters()``.

    ``model`` is the generative program p(x, z) with the data observed,
    ``guide`` the variational program q(z | x); both take one minibatch's
    arguments (a tensor, a tuple of positional arguments or a dict of keyword
    arguments, as the data set's items are) and sample the latent sites by the
    same names. ``parameters()`` yields every trainable tensor (a
    ``torch.nn.Module``'s; with Pyro's module-local parameters, which pplvae
    turns on, a ``PyroModule``'s ``PyroParam``s too).
    """

    def model(self, *args: Any, **kwargs: Any) -> Any: ...

    def guide(self, *args: Any, **kwargs: Any) -> Any: ...

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...


@runtime_checkable
class ImageModel(ModelGuidePair, Protocol):
    """Optional parts the pictures and the command line use, as :class:`pplvae.VAE` has them.

    * ``name`` (str) and ``config`` (a dataclass): saved in ``config.json``, so
      ``pplvae.load_run`` can rebuild a model registered in ``pplvae.MODELS``;
    * ``batch_args(x, labels) -> tuple``: the arguments of ``model``/``guide``
      for a minibatch of images (N, x_dim) and labels (N,) or None;
    * ``reconstruct(*args) -> (N, x_dim)``: reconstructions (``reconstructions.png``);
    * ``sample_images(num_samples) -> (num_samples, x_dim)``: means of p(x|z),
      z ~ p(z) (``samples.png``);
    * ``decode(z) -> (N, x_dim)`` with ``config.z_dim == 2``: the latent manifold.
    """

    name: str
    config: Any

    def batch_args(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple: ...

    def reconstruct(self, *args: Any) -> torch.Tensor: ...

    def sample_images(self, num_samples: int) -> torch.Tensor: ...


def check_model_guide(model, guide, *args, **kwargs) -> None:
    """Run ``guide`` and ``model`` (replayed against it) once and check that they sample the same latent sites.

    Meant for one small minibatch before any training: the guide is traced,
    the model replayed against its draws, without gradients, Pyro's parameter
    store untouched and torch's random state restored afterwards.

    A latent site of the model (not observed) must be sampled by the guide,
    unless the model enumerates it (``infer={"enumerate": ...}``, summed out
    by ``TraceEnum_ELBO``); every site the guide samples must be a latent site
    of the model.

    Raises:
        ValueError: naming the model's latent sites the guide does not sample,
            or the guide's sites the model does not have (or observes).

    Example:
        >>> import pyro.distributions as dist
        >>> def model(x):
        ...     u = pyro.sample("u", dist.Normal(0.0, 1.0))
        ...     pyro.sample("x", dist.Normal(u, 1.0), obs=x)
        >>> def guide(x):
        ...     pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> check_model_guide(model, guide, torch.tensor(0.5))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        ValueError: The guide does not sample the model's latent site(s) ['u']:...
    """
    with torch.random.fork_rng(devices=_cuda_devices(args, kwargs)), torch.no_grad(), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    guide_sites = {name for name, site in guide_trace.nodes.items() if _is_sample(site)}
    sites = {name: site for name, site in model_trace.nodes.items() if _is_sample(site)}
    latent = {name for name, site in sites.items() if not site["is_observed"]}
    enumerated = {name for name in latent if sites[name]["infer"].get("enumerate")}
    missing = sorted(latent - guide_sites - enumerated)
    if missing:
        raise ValueError(
            f"The guide does not sample the model's latent site(s) {missing}: add them to the guide "
            "(or enumerate discrete ones in the model with infer={'enumerate': 'parallel'} and TraceEnum_ELBO)."
        )
    extra = sorted(guide_sites - latent)
    if extra:
        kind = "observes" if set(extra) & set(sites) else "does not have"
        raise ValueError(f"The guide samples site(s) {extra} that the model {kind}; rename or remove them.")


def _is_sample(site) -> bool:
    return site["type"] == "sample" and not site_is_subsample(site)


def _cuda_devices(args, kwargs) -> list:
    return [v.device for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor) and v.is_cuda][:1]

