"""The ELBO with a weighted latent term: beta-VAE, sampled or analytic KL.

Both classes are Pyro's own estimators run on a model and guide wrapped by
:func:`~pplvae.objectives.latent_scale.scale_latents`, so they compute

    L_beta(x) = E_q[log p(x|z)] - beta * KL(q(z|x) || p(z))      (nats)

summed over the minibatch (Higgins et al. 2017, eq. 4). With ``beta = 1``
this is the ELBO (Kingma & Welling 2014, eq. 3); with ``beta = 0`` it is the
reconstruction term alone. :class:`BetaTrace_ELBO` estimates the KL from the
guide's draw (``log q(z|x) - log p(z)``, Kingma & Welling eq. 6, the
"SGVB A" estimator); :class:`BetaTraceMeanField_ELBO` uses the closed-form
KL where ``torch.distributions.kl_divergence`` has one (eq. 10, "SGVB B"),
which lowers the variance of the estimate and its gradients.

References:

[1] Kingma & Welling (2014), Auto-Encoding Variational Bayes, ICLR.
[2] Higgins et al. (2017), beta-VAE: Learning Basic Visual Concepts with a
    Constrained Variational Framework, ICLR.
"""

from __future__ import annotations

import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pplvae.objectives.latent_scale import scale_latents
from pplvae.objectives.terms import RngNeutralPlateGuess, kl_term, reconstruction
from pplvae.trace_elbo import FastTrace_ELBO

__all__ = ["BetaTrace_ELBO", "BetaTraceMeanField_ELBO"]


class _BetaMixin(RngNeutralPlateGuess):
    """Adds a mutable ``beta`` and ``loss_terms`` to a Pyro ``Trace_ELBO``."""

    analytic_kl = False

    def __init__(self, beta: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.beta = beta

    @property
    def beta(self) -> float:
        """Weight of the KL term; may be changed between steps (KL warm-up)."""
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        if not value >= 0:
            raise ValueError(f"beta must be >= 0, got {value}")
        self._beta = float(value)

    def _get_trace(self, model, guide, args, kwargs):
        if self._beta != 1.0:
            model = scale_latents(model, self._beta)
            guide = scale_latents(guide, self._beta)
        return super()._get_trace(model, guide, args, kwargs)

    @torch.no_grad()
    def loss_terms(self, model, guide, *args, **kwargs) -> dict[str, torch.Tensor]:
        """The objective split into its terms, from one guide draw.

        :returns: scalar tensors in nats, each summed over the minibatch:
            ``reconstruction`` = log p(x|z) at z ~ q(z|x);
            ``kl`` = KL(q(z|x) || p(z)), estimated as the objective estimates
            it (one-draw for ``BetaTrace_ELBO``, closed form for
            ``BetaTraceMeanField_ELBO``), *not* multiplied by beta;
            ``total`` = ``reconstruction - beta * kl``, the objective value,
            whose negative ``differentiable_loss`` returns for the same draw.
        """
        model_trace, guide_trace = super()._get_trace(model, guide, args, kwargs)
        recon = reconstruction(model_trace)
        kl = kl_term(model_trace, guide_trace, analytic=self.analytic_kl)
        return {"reconstruction": recon, "kl": kl, "total": recon - self._beta * kl}


class BetaTrace_ELBO(_BetaMixin, FastTrace_ELBO):
    """:class:`~pyro.infer.Trace_ELBO` with the latent term weighted by beta.

    At ``beta == 1`` it is :class:`~pplvae.trace_elbo.FastTrace_ELBO`
    (Trace_ELBO's value and gradients without its host syncs); at any other
    beta it is Trace_ELBO on the beta-scaled programs.

    :param beta: weight of the KL term, ``>= 0``; ``1`` gives the ELBO.
    :param kwargs: passed to :class:`~pyro.infer.Trace_ELBO`
        (``num_particles``, ``vectorize_particles``, ...).
    :raises ValueError: if ``beta < 0``.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        if self._beta != 1.0:  # the fast path does not go through _get_trace, which scales the latents
            return Trace_ELBO.differentiable_loss(self, model, guide, *args, **kwargs)
        return super().differentiable_loss(model, guide, *args, **kwargs)


class BetaTraceMeanField_ELBO(_BetaMixin, TraceMeanField_ELBO):
    """:class:`~pyro.infer.TraceMeanField_ELBO` (analytic KL) weighted by beta.

    The analytic KL is multiplied by the guide site's ``scale``, which the
    wrapping handler sets to beta. Requires a mean-field, reparameterized
    guide, as ``TraceMeanField_ELBO`` does.

    :param beta: weight of the KL term, ``>= 0``; ``1`` gives the ELBO.
    :param kwargs: passed to :class:`~pyro.infer.TraceMeanField_ELBO`.
    :raises ValueError: if ``beta < 0``.
    """

    analytic_kl = True
