"""Neural networks of the encoder and decoders: MLPs of standard ``torch.nn`` layers that output distribution parameters."""

from __future__ import annotations

from typing import Sequence

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "softplus": nn.Softplus, "elu": nn.ELU}


def mlp(in_dim: int, hidden_dims: Sequence[int], activation: str = "tanh") -> nn.Sequential:
    """A stack of Linear + activation layers, ``in_dim -> hidden_dims[0] -> ... -> hidden_dims[-1]``.

    Returns an ``nn.Sequential`` mapping (..., in_dim) -> (..., hidden_dims[-1])
    (the identity when ``hidden_dims`` is empty).

    Raises:
        ValueError: an unknown activation name.

    Example:
        >>> mlp(784, [200, 200])
        Sequential(
          (0): Linear(in_features=784, out_features=200, bias=True)
          (1): Tanh()
          (2): Linear(in_features=200, out_features=200, bias=True)
          (3): Tanh()
        )
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}.")
    layers: list[nn.Module] = []
    for d_in, d_out in zip([in_dim, *hidden_dims], hidden_dims):
        layers += [nn.Linear(d_in, d_out), ACTIVATIONS[activation]()]
    return nn.Sequential(*layers)


def concat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate along the last dim, broadcasting the leading dims: (..., d1), (..., d2) -> (..., d1 + d2).

    A network's inputs such as ``[z, y]`` can differ in leading dims: z drawn
    in a vectorized plate of samples is (K, N, z_dim) while y is (N, y_dim).

    Example:
        >>> concat([torch.zeros(5, 3, 2), torch.ones(3, 4)]).shape
        torch.Size([5, 3, 6])
    """
    batch_shape = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(*batch_shape, t.shape[-1]) for t in tensors], dim=-1)


class GaussianEncoder(nn.Module):
    """q(z | x) = N(z; loc(x), diag(scale(x)^2)), an MLP (Kingma & Welling 2013, appendix C.2).

    ``forward(x)`` maps (..., in_dim) to ``(z_loc, z_scale)``, each (..., z_dim);
    ``z_scale`` is a standard deviation, ``exp`` of the network's log-scale output.
    """

    def __init__(self, in_dim: int, z_dim: int, hidden_dims: Sequence[int], activation: str = "tanh"):
        super().__init__()
        self.body = mlp(in_dim, hidden_dims, activation)
        self.loc_scale = nn.Linear(hidden_dims[-1] if hidden_dims else in_dim, 2 * z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_loc, z_log_scale = self.loc_scale(self.body(x)).chunk(2, dim=-1)
        return z_loc, z_log_scale.exp()


class BernoulliDecoder(nn.Module):
    """p(x | z) = prod_d Bernoulli(x_d; sigmoid(logits_d(z))), an MLP (Kingma & Welling 2013, appendix C.1).

    ``forward(z)`` maps (..., z_dim) to ``dist.Bernoulli(logits=logits).to_event(1)``,
    batch shape (...) and event shape (x_dim,); ``mean(z)`` gives the pixel
    probabilities (..., x_dim).
    """

    def __init__(self, z_dim: int, x_dim: int, hidden_dims: Sequence[int], activation: str = "tanh"):
        super().__init__()
        self.body = mlp(z_dim, hidden_dims, activation)
        self.logits = nn.Linear(hidden_dims[-1] if hidden_dims else z_dim, x_dim)

    def forward(self, z: torch.Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=self.logits(self.body(z))).to_event(1)

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(self.body(z)))


class GaussianDecoder(nn.Module):
    """p(x | z) = N(x; loc(z), diag(scale(z)^2)), an MLP (Kingma & Welling 2013, appendix C.2).

    ``loc`` passes through a sigmoid since pixels lie in [0, 1]; ``scale`` is
    ``softplus(.) + min_scale`` so the density stays bounded (``min_scale`` in
    pixel units, default 0.01). ``forward(z)`` returns a distribution with
    event shape (x_dim,); ``mean(z)`` gives ``loc`` (..., x_dim).
    """

    def __init__(
        self,
        z_dim: int,
        x_dim: int,
        hidden_dims: Sequence[int],
        activation: str = "tanh",
        min_scale: float = 0.01,
    ):
        super().__init__()
        self.body = mlp(z_dim, hidden_dims, activation)
        self.loc_scale = nn.Linear(hidden_dims[-1] if hidden_dims else z_dim, 2 * x_dim)
        self.min_scale = min_scale

    def _loc_scale(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, scale = self.loc_scale(self.body(z)).chunk(2, dim=-1)
        return torch.sigmoid(loc), F.softplus(scale) + self.min_scale

    def forward(self, z: torch.Tensor) -> dist.TorchDistribution:
        loc, scale = self._loc_scale(z)
        return dist.Normal(loc, scale).to_event(1)

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        return self._loc_scale(z)[0]


DECODERS = {"bernoulli": BernoulliDecoder, "gaussian": GaussianDecoder}
