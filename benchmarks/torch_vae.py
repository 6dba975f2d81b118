"""The floor: a VAE written by hand in PyTorch, with no probabilistic-programming layer.

The layers are those of :class:`pplvae.VAE` (an MLP encoder with one linear
head giving ``z_loc`` and ``log z_scale``, a mirrored MLP decoder giving
Bernoulli logits), under the same parameter names, so weights move between the
two with ``load_state_dict`` and both can start from the same initial weights.
The loss is the same single-sample reparameterized estimate of the ELBO that
Pyro's ``Trace_ELBO`` computes for the VAE (Kingma & Welling 2013, eq. 6, the
KL term estimated from the draw, not in closed form), written out by hand:

    z = z_loc + z_scale * eps,                     eps ~ N(0, I)
    -ELBO(x) = -[log p(x|z) + log N(z; 0, I) - log N(z; z_loc, z_scale^2)]
             = BCE(logits(z), x) + sum(z^2 - eps^2) / 2 - sum(log z_scale)

(the log(2 pi) terms of the two Gaussians cancel). This module imports
nothing from pplvae.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "softplus": nn.Softplus, "elu": nn.ELU}


def _mlp(in_dim: int, hidden_dims: Sequence[int], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for d_in, d_out in zip([in_dim, *hidden_dims], hidden_dims):
        layers += [nn.Linear(d_in, d_out), ACTIVATIONS[activation]()]
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """x (N, x_dim) -> (z_loc, z_scale), each (N, z_dim)."""

    def __init__(self, x_dim: int, z_dim: int, hidden_dims: Sequence[int], activation: str):
        super().__init__()
        self.body = _mlp(x_dim, hidden_dims, activation)
        self.loc_scale = nn.Linear(hidden_dims[-1], 2 * z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_loc, z_log_scale = self.loc_scale(self.body(x)).chunk(2, dim=-1)
        return z_loc, z_log_scale.exp()


class Decoder(nn.Module):
    """z (N, z_dim) -> Bernoulli logits (N, x_dim)."""

    def __init__(self, z_dim: int, x_dim: int, hidden_dims: Sequence[int], activation: str):
        super().__init__()
        self.body = _mlp(z_dim, hidden_dims, activation)
        self.logits = nn.Linear(hidden_dims[-1], x_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.logits(self.body(z))


class TorchVAE(nn.Module):
    """A Bernoulli VAE in plain PyTorch: ``forward(x)`` is -ELBO per datapoint (nats).

    Args:
        x_dim, z_dim, hidden_dims, activation: as :class:`pplvae.VAEConfig`
            (the decoder mirrors ``hidden_dims``).
    """

    def __init__(self, x_dim: int, z_dim: int = 50, hidden_dims: Sequence[int] = (200, 200),
                 activation: str = "tanh"):
        super().__init__()
        self.encoder = Encoder(x_dim, z_dim, hidden_dims, activation)
        self.decoder = Decoder(z_dim, x_dim, tuple(hidden_dims)[::-1], activation)

    @torch.no_grad()
    def init_output_bias(self, x_mean: torch.Tensor, clamp: float = 1e-3) -> None:
        """Burda et al.'s start: the decoder's output bias at logit(mean training pixel), the mean
        clamped to [clamp, 1 - clamp]; ``x_mean`` is (x_dim,)."""
        p = x_mean.clamp(clamp, 1 - clamp)
        self.decoder.logits.bias.copy_(torch.log(p) - torch.log1p(-p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z_loc, z_scale = self.encoder(x)  # (N, z_dim) each
        eps = torch.randn_like(z_loc)
        z = z_loc + z_scale * eps
        nll = F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="sum")
        kl = 0.5 * (z.pow(2) - eps.pow(2)).sum() - z_scale.log().sum()  # log q(z|x) - log p(z)
        return (nll + kl) / x.shape[0]


@torch.no_grad()
def log_marginal_likelihood(twin: TorchVAE, x: torch.Tensor, num_samples: int, chunk_samples: int = 2500,
                            ) -> torch.Tensor:
    """The hand-written importance-sampled log p(x): (N,) nats per datapoint (Burda et al. 2016, eq. 8).

    log p̂(x_i) = logsumexp_k [log p(x_i | z_k) + log p(z_k) - log q(z_k | x_i)] - log K with
    z_k ~ q(z | x_i), one datapoint at a time, ``chunk_samples`` samples per
    decoder call: what a researcher writes without a probabilistic-programming
    layer, with PyTorch's own ``binary_cross_entropy_with_logits`` and ``nn.Tanh``.
    """
    # Results go into tensors made once: small tensors allocated between the
    # chunks' large ones fragment glibc's heap, which then grew by about 2 MB
    # per image (20 GB over the 10,000 test images).
    out = torch.empty(len(x), device=x.device)
    log_w = torch.empty(num_samples, device=x.device)
    for i, x_i in enumerate(x.split(1)):  # (1, x_dim)
        z_loc, z_scale = twin.encoder(x_i)  # (1, z_dim) each
        for start in range(0, num_samples, chunk_samples):
            eps = torch.randn(min(chunk_samples, num_samples - start), z_loc.shape[-1], device=x.device)
            z = z_loc + z_scale * eps  # (k, z_dim)
            log_px_z = -F.binary_cross_entropy_with_logits(
                twin.decoder(z), x_i.expand(len(z), -1), reduction="none").sum(-1)  # (k,)
            log_w[start : start + len(z)] = log_px_z - 0.5 * (z.pow(2) - eps.pow(2)).sum(-1) + z_scale.log().sum()
        out[i] = torch.logsumexp(log_w, 0) - math.log(num_samples)
    return out


def make_step(twin: TorchVAE, optimizer: torch.optim.Optimizer):
    """The hand-written training step: ``step(x)`` returns the detached -ELBO per datapoint."""

    def step(x: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = twin(x)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def torch_vae_like(vae) -> TorchVAE:
    """A :class:`TorchVAE` with the sizes and the current weights of a :class:`pplvae.VAE`."""
    config = vae.config
    if config.likelihood != "bernoulli":
        raise ValueError(f"TorchVAE has a Bernoulli decoder only, got likelihood={config.likelihood!r}.")
    twin = TorchVAE(config.x_dim, config.z_dim, config.hidden_dims, config.activation)
    twin.load_state_dict(_weights(vae), strict=True)
    return twin.to(next(vae.parameters()).device)


def load_into(vae, twin: TorchVAE) -> None:
    """Copy a :class:`TorchVAE`'s weights into a :class:`pplvae.VAE` of the same sizes."""
    missing, unexpected = vae.load_state_dict(twin.state_dict(), strict=False)
    if unexpected or set(missing) - set(dict(vae.named_buffers())):
        raise ValueError(f"Layers differ: missing {missing}, unexpected {unexpected}.")


def _weights(vae) -> dict:
    return {name: value for name, value in vae.state_dict().items() if name not in dict(vae.named_buffers())}
