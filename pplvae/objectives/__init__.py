"""Training objectives beyond the plain ELBO.

One module per objective: :mod:`~pplvae.objectives.elbo` (beta-VAE, sampled
or analytic KL), :mod:`~pplvae.objectives.iwae` (importance-weighted bound),
:mod:`~pplvae.objectives.mmd` (MMD-VAE / InfoVAE), with the beta handler in
:mod:`~pplvae.objectives.latent_scale`, the KL warm-up schedule in
:mod:`~pplvae.objectives.warmup` and :func:`make_objective` in
:mod:`~pplvae.objectives.factory`.
"""

from pplvae.objectives.elbo import BetaTrace_ELBO, BetaTraceMeanField_ELBO
from pplvae.objectives.factory import OBJECTIVES, make_objective
from pplvae.objectives.iwae import GRADIENTS, IWAE_ELBO
from pplvae.objectives.latent_scale import LatentScaleMessenger, scale_latents
from pplvae.objectives.mmd import KERNELS, MMD_VAE, kernel_matrix, mmd
from pplvae.objectives.warmup import kl_warmup_weight

__all__ = [
    "BetaTraceMeanField_ELBO",
    "BetaTrace_ELBO",
    "GRADIENTS",
    "IWAE_ELBO",
    "KERNELS",
    "LatentScaleMessenger",
    "MMD_VAE",
    "OBJECTIVES",
    "kernel_matrix",
    "kl_warmup_weight",
    "make_objective",
    "mmd",
    "scale_latents",
]
