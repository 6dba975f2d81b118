"""The importance-weighted (IWAE) bound as a differentiable training loss.

For K particles z_1..z_K ~ q(z|x) drawn independently per datapoint,

    L_K(x) = E[ log (1/K) sum_k p(x, z_k) / q(z_k|x) ]      (nats)

(Burda et al. 2016, eq. 8). ``L_1`` is the ELBO, ``L_K <= L_{K+1} <= log p(x)``
(their Theorem 1). Pyro implements this value as
:class:`~pyro.infer.RenyiELBO` with ``alpha = 0`` (Li & Turner 2016), but only
through ``loss`` and ``loss_and_grads``; :class:`IWAE_ELBO` adds the
``differentiable_loss`` that a plain ``torch.optim`` loop needs, computed from
the same traces and the same per-datapoint log-weights (the data plate is
kept, the log-sum-exp runs over particles per datapoint, then sums over the
minibatch). For a reparameterized guide the gradient of this surrogate is the
IWAE gradient, sum_k w~_k grad log w_k (Burda et al. eq. 14), which is what
``RenyiELBO.loss_and_grads`` back-propagates.

References:

[1] Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders,
    ICLR.
[2] Li & Turner (2016), Renyi Divergence Variational Inference, NeurIPS.
"""

from __future__ import annotations

import math

import torch
from pyro.infer import RenyiELBO
from pyro.infer.util import check_fully_reparametrized

from pplvae.objectives.terms import RngNeutralPlateGuess, kl_term, log_weights, reconstruction
from pplvae.objectives.warmup import FixedBeta

__all__ = ["IWAE_ELBO"]


class IWAE_ELBO(FixedBeta, RngNeutralPlateGuess, RenyiELBO):
    """:class:`~pyro.infer.RenyiELBO` at ``alpha = 0`` with a differentiable loss.

    :param num_particles: K, the number of importance samples per datapoint.
    :param vectorize_particles: draw the K particles in one vectorized pass
        (a particle plate left of the model's plates); needs a model whose
        plates are declared with ``pyro.plate``.
    :param kwargs: passed to :class:`~pyro.infer.RenyiELBO`.
    :raises ValueError: if ``num_particles < 1``.

    ``beta`` is fixed at 1: weighting ``log p(z) - log q(z|x)`` inside the
    importance weights does not give a bound on ``log p(x)``, so a beta other
    than 1 (including a KL warm-up) raises ``ValueError``.
    """

    objective_name = "the IWAE objective"

    def __init__(self, num_particles: int = 5, vectorize_particles: bool = True, **kwargs):
        if num_particles < 1:
            raise ValueError(f"num_particles must be >= 1, got {num_particles}")
        super().__init__(
            alpha=0,
            num_particles=num_particles,
            vectorize_particles=vectorize_particles,
            **kwargs,
        )


    def _traces(self, model, guide, args, kwargs):
        traces = list(self._get_traces(model, guide, args, kwargs))
        for _, guide_trace in traces:
            for site in guide_trace.nodes.values():
                if site["type"] == "sample":
                    check_fully_reparametrized(site)
        return traces

    def _bound(self, traces) -> torch.Tensor:
        vectorized = self.vectorize_particles and self.num_particles > 1  # as in RenyiELBO
        log_w = log_weights(traces, vectorized)  # (K, N)
        return torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)  # (N,)

    def bound(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The K-sample bound ``L_K`` of every datapoint from one set of draws.

        :returns: tensor of shape ``(N,)``, nats per datapoint, differentiable.
        :raises NotImplementedError: if a guide site is not reparameterized.
        """
        return self._bound(self._traces(model, guide, args, kwargs))

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """``-L_K`` summed over the minibatch (nats), differentiable.

        :raises NotImplementedError: if a guide site is not reparameterized.
        """
        return -self.bound(model, guide, *args, **kwargs).sum()

    @torch.no_grad()
    def loss_terms(self, model, guide, *args, **kwargs) -> dict[str, torch.Tensor]:
        """The bound and the ELBO's split, from one set of K particles.

        :returns: scalar tensors in nats, summed over the minibatch:
            ``reconstruction`` and ``kl`` are the one-draw ELBO terms averaged
            over the K particles (so ``reconstruction - kl`` is the K-particle
            ELBO estimate); ``total`` is the IWAE bound ``L_K``, which exceeds
            ``reconstruction - kl`` by the importance-weighting gain
            (``>= 0`` in expectation).
        """
        traces = self._traces(model, guide, args, kwargs)
        recon = sum(reconstruction(m) for m, _ in traces) / self.num_particles
        kl = sum(kl_term(m, g) for m, g in traces) / self.num_particles
        return {"reconstruction": recon, "kl": kl, "total": self._bound(traces).sum()}
