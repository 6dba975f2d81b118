"""Build a training objective by name (the command line's ``--objective``)."""

from __future__ import annotations

from pplvae.objectives.elbo import BetaTrace_ELBO, BetaTraceMeanField_ELBO
from pplvae.objectives.iwae import GRADIENTS, IWAE_ELBO
from pplvae.objectives.mmd import MMD_VAE

__all__ = ["OBJECTIVES", "make_objective"]

OBJECTIVES = ("elbo", "elbo-analytic", "iwae", "mmd")


def make_objective(
    name: str = "elbo",
    *,
    beta: float = 1.0,
    num_particles: int = 1,
    mmd_weight: float = 1000.0,
    kernel: str = "gaussian",
    bandwidth: float | None = None,
    vectorize_particles: bool = True,
    gradient: str = "standard",
):
    """A Pyro ELBO-like objective with ``differentiable_loss``, ``loss_terms``
    and a mutable ``beta``.

    * ``"elbo"``: :class:`~pplvae.objectives.elbo.BetaTrace_ELBO`, the ELBO
      with sampled KL, latent term weighted by ``beta``;
    * ``"elbo-analytic"``: :class:`~pplvae.objectives.elbo.BetaTraceMeanField_ELBO`,
      the same with the closed-form KL;
    * ``"iwae"``: :class:`~pplvae.objectives.iwae.IWAE_ELBO`, the K-sample
      bound with ``K = num_particles`` (``beta`` must be 1), with the
      ``gradient`` estimator ``"standard"`` or ``"dreg"`` (Tucker et al. 2019);
    * ``"mmd"``: :class:`~pplvae.objectives.mmd.MMD_VAE`, reconstruction minus
      ``mmd_weight * MMD^2`` per datapoint (``beta`` must be 1,
      ``num_particles`` must be 1).

    ``differentiable_loss(model, guide, *args)`` returns the negative
    objective summed over the minibatch (nats; the MMD term in nats-scale
    units set by ``mmd_weight``). For the ELBOs ``num_particles`` averages
    that many independent estimates.

    :raises ValueError: for an unknown name, ``num_particles < 1``, or an
        option that does not apply to the objective (``beta != 1`` for iwae or
        mmd, ``num_particles != 1`` for mmd, ``gradient != "standard"`` for
        anything but iwae).

    >>> make_objective("iwae", num_particles=5).num_particles
    5
    """
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; expected one of {OBJECTIVES}")
    if num_particles < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    if name in ("iwae", "mmd") and beta != 1.0:
        raise ValueError(f"beta applies to 'elbo' and 'elbo-analytic' only, not {name!r} (got beta={beta})")
    if gradient not in GRADIENTS:
        raise ValueError(f"unknown gradient {gradient!r}; expected one of {GRADIENTS}")
    if name != "iwae" and gradient != "standard":
        raise ValueError(f"gradient={gradient!r} applies to 'iwae' only, not {name!r}")
    # a particle plate only pays off for K > 1 (and guessing its position costs a draw)
    vectorize_particles = vectorize_particles and num_particles > 1
    if name == "elbo":
        return BetaTrace_ELBO(beta=beta, num_particles=num_particles, vectorize_particles=vectorize_particles)
    if name == "elbo-analytic":
        return BetaTraceMeanField_ELBO(beta=beta, num_particles=num_particles, vectorize_particles=vectorize_particles)
    if name == "iwae":
        return IWAE_ELBO(num_particles=num_particles, vectorize_particles=vectorize_particles, gradient=gradient)
    if num_particles != 1:
        raise ValueError("the MMD objective uses one draw per datapoint: num_particles must be 1")
    return MMD_VAE(mmd_weight=mmd_weight, kernel=kernel, bandwidth=bandwidth)
