"""A Pyro effect handler that scales the log-density of latent sites only.

This is the mechanism behind the beta-VAE objective: applied to both the
model and the guide, it multiplies ``log p(z)`` and ``log q(z|x)`` by
``beta`` while leaving ``log p(x|z)`` untouched, so that any Pyro ELBO
estimator computes

    E_q[log p(x|z)] - beta * KL(q(z|x) || p(z))

(Higgins et al. 2017, eq. 4). It works with
:class:`~pyro.infer.Trace_ELBO` (sampled KL: ``beta * (log p(z) - log q(z|x))``
per draw) and with :class:`~pyro.infer.TraceMeanField_ELBO`, whose analytic
KL is multiplied by the *guide* site's ``scale`` (see
``TraceMeanField_ELBO._differentiable_loss_particle``), which this handler
sets.

References:

[1] Higgins et al. (2017), beta-VAE: Learning Basic Visual Concepts with a
    Constrained Variational Framework, ICLR.
"""

from __future__ import annotations

import numbers

import torch
from pyro.poutine.messenger import Messenger

__all__ = ["LatentScaleMessenger", "scale_latents"]


class LatentScaleMessenger(Messenger):
    """Multiply ``msg["scale"]`` by ``scale`` at every *latent* sample site.

    Like :class:`pyro.poutine.scale_messenger.ScaleMessenger`, but a site
    with ``is_observed=True`` (``obs=...``, ``pyro.factor``, or a site
    observed by :func:`pyro.poutine.condition`) is left alone. Scales compose
    multiplicatively with those of enclosing plates and other handlers.

    Unlike ``poutine.scale``, ``scale = 0`` is allowed: it is the start of a
    KL warm-up, where the latent term is switched off.

    :param scale: a non-negative number (or a non-negative tensor that
        broadcasts against the sites' batch shapes).
    :raises ValueError: if ``scale`` is negative.

    >>> import pyro, pyro.distributions as dist, torch
    >>> from pyro import poutine
    >>> def model(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
    ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
    >>> tr = poutine.trace(scale_latents(model, 0.5)).get_trace(torch.zeros(3))
    >>> tr.nodes["z"]["scale"], tr.nodes["x"]["scale"]
    (0.5, 1.0)
    """

    def __init__(self, scale: float | torch.Tensor) -> None:
        if isinstance(scale, numbers.Number):
            negative = scale < 0
        else:
            negative = bool((scale < 0).any())
        if negative:
            raise ValueError(f"Expected scale >= 0 but got {scale}")
        super().__init__()
        self.scale = scale

    def _process_message(self, msg) -> None:
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self.scale * msg["scale"]


def scale_latents(fn=None, scale: float | torch.Tensor = 1.0):
    """Handler form of :class:`LatentScaleMessenger`.

    ``scale_latents(model, beta)`` returns a callable that runs ``model`` with
    every latent site's log-density multiplied by ``beta``;
    ``scale_latents(scale=beta)`` returns the messenger for use as a context
    manager.
    """
    messenger = LatentScaleMessenger(scale)
    return messenger if fn is None else messenger(fn)
