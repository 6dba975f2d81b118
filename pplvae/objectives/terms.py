"""Split a (model trace, guide trace) pair into reconstruction and latent terms.

Shared by every objective's ``loss_terms``. Convention: every sample site of
the model with ``is_observed`` is part of the reconstruction term
``log p(x|z)``; every other (latent) sample site contributes to the latent
term. Sites must carry the log-probabilities that
:func:`pyro.infer.enum.get_importance_trace` computes.
"""

from __future__ import annotations

import pyro.util
import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer.util import get_dependent_plate_dims, torch_sum
from torch.distributions import kl_divergence

__all__ = ["RngNeutralPlateGuess", "latent_sites", "reconstruction", "kl_term", "log_weights"]


def latent_sites(model_trace):
    """Names of the model's unobserved sample sites, in execution order."""
    return [
        name
        for name, site in model_trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"]
    ]


def reconstruction(model_trace) -> torch.Tensor:
    """``sum log p(x|z)`` over the observed sites: a scalar in nats, summed
    over every plate (the minibatch) and over particles if vectorized."""
    total = torch.zeros(())
    for site in model_trace.nodes.values():
        if site["type"] == "sample" and site["is_observed"]:
            total = total + site["log_prob_sum"]
    return total


def kl_term(model_trace, guide_trace, analytic: bool = False) -> torch.Tensor:
    """``KL(q(z|x) || p(z))`` summed over latent sites and the minibatch (nats).

    With ``analytic=False`` this is the one-draw estimate
    ``log q(z|x) - log p(z)`` at the guide's sample (what
    :class:`~pyro.infer.Trace_ELBO` uses); with ``analytic=True`` it is
    ``torch.distributions.kl_divergence(q, p)`` where registered, falling back
    on the one-draw estimate per site otherwise (what
    :class:`~pyro.infer.TraceMeanField_ELBO` uses). Site scales and masks are
    applied exactly as in those estimators.
    """
    total = torch.zeros(())
    for name in latent_sites(model_trace):
        model_site, guide_site = model_trace.nodes[name], guide_trace.nodes[name]
        if analytic:
            try:
                kl = kl_divergence(guide_site["fn"], model_site["fn"])
            except NotImplementedError:
                pass
            else:
                kl = scale_and_mask(kl, guide_site["scale"], guide_site["mask"])
                total = total + kl.sum()
                continue
        total = total + guide_site["log_prob_sum"] - model_site["log_prob_sum"]
    return total


def log_weights(traces, vectorized: bool) -> torch.Tensor:
    """Per-particle, per-datapoint importance log-weights
    ``log p(x, z_k) - log q(z_k|x)`` (nats), as in
    :class:`~pyro.infer.RenyiELBO`: plates common to all sites (the data
    plate) are kept, the others are summed.

    :param traces: iterable of ``(model_trace, guide_trace)`` from
        ``ELBO._get_traces``.
    :param vectorized: whether the traces come from one vectorized trace
        with a leading particle dimension (Pyro adds that dimension only for
        more than one particle).
    :returns: tensor of shape ``(K, N)`` for the usual VAE (``K`` particles,
        ``N`` datapoints in the ``"data"`` plate).
    """
    particles = []
    for model_trace, guide_trace in traces:
        sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
        log_w = 0.0
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                log_w = log_w + torch_sum(site["log_prob"], sum_dims)
        for site in guide_trace.nodes.values():
            if site["type"] == "sample":
                log_w = log_w - torch_sum(site["log_prob"], sum_dims)
        particles.append(log_w)
    return particles[0] if vectorized else torch.stack(particles)


class RngNeutralPlateGuess:
    """Mixin for a Pyro ``ELBO``: guess ``max_plate_nesting`` without using up random draws.

    With ``vectorize_particles`` Pyro runs model and guide once on the first
    call to find where the particle plate may go. That run draws from the
    global RNG, so a resumed run (a fresh objective) would draw differently
    from an uninterrupted one. Restoring the RNG state afterwards keeps
    training reproducible across a checkpoint.
    """

    def _guess_max_plate_nesting(self, model, guide, args, kwargs):
        state = pyro.util.get_rng_state()
        try:
            super()._guess_max_plate_nesting(model, guide, args, kwargs)
        finally:
            pyro.util.set_rng_state(state)
