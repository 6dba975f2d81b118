"""Neural networks of the encoder and decoders: MLPs of standard ``torch.nn`` layers that output distribution parameters."""

from __future__ import annotations

import math
from typing import Sequence

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "softplus": nn.Softplus, "elu": nn.ELU}
#: Parametrizations of :class:`GaussianEncoder`'s scale.
SCALES = ("exp", "softplus")
#: Clamp of the mean pixel before the logit in :meth:`BernoulliDecoder.init_output_bias`.
OUTPUT_MEAN_CLAMP = 1e-3


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
    ``z_scale`` is a standard deviation. Also the conditional prior of a
    hierarchical model, p(z1 | z2).

    Args:
        in_dim, z_dim, hidden_dims, activation: the MLP's sizes, as :func:`mlp`.
        scale: ``"exp"``: z_scale = exp(h) (Kingma & Welling; Burda et al.), or
            ``"softplus"``: z_scale = softplus(h), which grows linearly, not
            exponentially, in the network's output h.
        scale_init: the scale the head's bias starts at (its bias set to
            log(scale_init), or softplus^-1(scale_init)); None keeps torch's
            default init (scale about 1 for ``"exp"``, 0.69 for ``"softplus"``).
        skip: add a linear map of the input to ``z_loc`` (a skip connection
            around the MLP), so the mean starts linear in the input.

    Raises:
        ValueError: an unknown ``scale`` or a ``scale_init`` <= 0.
    """

    def __init__(self, in_dim: int, z_dim: int, hidden_dims: Sequence[int], activation: str = "tanh",
                 scale: str = "exp", scale_init: float | None = None, skip: bool = False):
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"Unknown scale {scale!r}; choose one of {SCALES}.")
        if scale_init is not None and not scale_init > 0:
            raise ValueError(f"scale_init must be positive, got {scale_init}.")
        self.body = mlp(in_dim, hidden_dims, activation)
        self.loc_scale = nn.Linear(hidden_dims[-1] if hidden_dims else in_dim, 2 * z_dim)
        self.skip = nn.Linear(in_dim, z_dim, bias=False) if skip else None
        self.scale = scale
        if scale_init is not None:
            bias = math.log(scale_init) if scale == "exp" else math.log(math.expm1(scale_init))
            with torch.no_grad():
                self.loc_scale.bias[z_dim:] = bias

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_loc, h = self.loc_scale(self.body(x)).chunk(2, dim=-1)
        if self.skip is not None:
            z_loc = z_loc + self.skip(x)
        return z_loc, h.exp() if self.scale == "exp" else F.softplus(h)


class BernoulliDecoder(nn.Module):
    """p(x | z) = prod_d Bernoulli(x_d; sigmoid(logits_d(z))), an MLP (Kingma & Welling 2013, appendix C.1).

    ``forward(z)`` maps (..., z_dim) to ``dist.Bernoulli(logits=logits).to_event(1)``,
    batch shape (...) and event shape (x_dim,); ``mean(z)`` gives the pixel
    probabilities (..., x_dim). :meth:`init_output_bias` starts the output
    bias at the logit of the mean training pixel (Burda et al. 2016's code).
    """

    def __init__(self, z_dim: int, x_dim: int, hidden_dims: Sequence[int], activation: str = "tanh"):
        super().__init__()
        self.body = mlp(z_dim, hidden_dims, activation)
        self.logits = nn.Linear(hidden_dims[-1] if hidden_dims else z_dim, x_dim)

    def forward(self, z: torch.Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=self.logits(self.body(z))).to_event(1)

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(self.body(z)))

    @torch.no_grad()
    def init_output_bias(self, x_mean: torch.Tensor, clamp: float = OUTPUT_MEAN_CLAMP) -> None:
        """Set the output layer's bias to logit(x_mean), x_mean clamped to [clamp, 1 - clamp].

        With the hidden layers' output near zero at the start, every pixel then
        starts at its mean over the training set instead of at 1/2, which takes
        the first epochs off learning the average image (Burda, Grosse &
        Salakhutdinov 2016, their code; the clamp keeps always-black border
        pixels at a finite logit, about -6.9 for the default 1e-3).

        Args:
            x_mean: (x_dim,) mean training pixel, in [0, 1].
            clamp: the distance from 0 and 1 the mean is clamped to before the logit.

        Raises:
            ValueError: ``x_mean`` does not have shape (x_dim,).
        """
        if x_mean.shape != self.logits.bias.shape:
            raise ValueError(f"x_mean must have shape {tuple(self.logits.bias.shape)}, got {tuple(x_mean.shape)}.")
        self.logits.bias.copy_(torch.logit(x_mean.clamp(clamp, 1 - clamp)))


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
