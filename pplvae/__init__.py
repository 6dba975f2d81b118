"""pplvae: variational autoencoders written as Pyro model/guide pairs."""

from pplvae.objectives import (
    OBJECTIVES,
    kl_warmup_weight,
    make_objective,
    mmd,
    scale_latents,
)

__all__ = [
    "OBJECTIVES",
    "kl_warmup_weight",
    "make_objective",
    "mmd",
    "scale_latents",
]
