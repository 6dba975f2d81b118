"""The plain Pyro recipe that users copy from Pyro's ``examples/vae/vae.py``.

``pyro.module`` registers the networks in Pyro's global parameter store on
every call, ``SVI(model, guide, pyro.optim.Adam({"lr": ...}), Trace_ELBO())``
takes the step and returns the loss as a Python float, and Pyro's validation
is left at its default (on). The networks are the hand-written ones of
:mod:`benchmarks.torch_vae`, so all three contenders run the same layers; the
likelihood is ``Bernoulli(logits=...)`` as in pplvae (the example's
sigmoid-plus-fudge probabilities would change the numbers, not the cost).
"""

from __future__ import annotations

from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from benchmarks.torch_vae import Decoder, Encoder


class PyroRecipeVAE(nn.Module):
    """``model(x)`` and ``guide(x)`` as in Pyro's VAE example; x is (N, x_dim)."""

    def __init__(self, x_dim: int, z_dim: int = 50, hidden_dims: Sequence[int] = (200, 200),
                 activation: str = "tanh"):
        super().__init__()
        self.z_dim = z_dim
        self.encoder = Encoder(x_dim, z_dim, hidden_dims, activation)
        self.decoder = Decoder(z_dim, x_dim, tuple(hidden_dims)[::-1], activation)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros((x.shape[0], self.z_dim))
            z_scale = x.new_ones((x.shape[0], self.z_dim))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            logits = self.decoder(z)
            pyro.sample("obs", dist.Bernoulli(logits=logits, validate_args=False).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


def make_svi(vae: PyroRecipeVAE, learning_rate: float = 1e-3) -> SVI:
    """The example's inference object; ``svi.step(x)`` returns -ELBO summed over x (a float)."""
    return SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": learning_rate}), loss=Trace_ELBO())
