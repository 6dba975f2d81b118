"""Neural networks of the encoder and decoders: MLPs that output distribution parameters."""

from __future__ import annotations

from typing import Callable, Sequence

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from pplvae.distributions import LinearBernoulli


class Tanh(nn.Module):
    """tanh, elementwise: (...) -> (...), as ``nn.Tanh`` but faster where no gradient is needed.

    Under autograd this is ``torch.tanh``. Without (``torch.no_grad()``, as in
    :func:`pplvae.log_marginal_likelihood`) it computes the same function as
    tanh(x) = 2 sigmoid(2x) - 1: on the AMD Zen 4 CPU of our CI, PyTorch's
    ``tanh`` kernel costs about 4x this, and the decoder's two hidden tanh
    layers took a tenth of the time of importance sampling with K = 5000 (on
    the Intel Xeon we tried, ``torch.tanh`` was instead 2x faster than this
    form; docs/marginal_likelihood.md). The two forms differ by float rounding
    (absolute error below 2.4e-7 in float32: the subtraction of 1 from a
    number in [0, 2]).

    Args:
        inplace: without autograd, overwrite the input with the result instead
            of allocating a new tensor (as ``nn.ReLU(inplace=True)``); for an
            input nothing else uses, such as a ``Linear`` layer's output in
            :func:`mlp`, where it saved 6% of the estimate's time on two CPU
            threads. Under autograd the input is never overwritten.

    Example:
        >>> x = torch.linspace(-5, 5, 11)
        >>> with torch.no_grad():
        ...     torch.allclose(Tanh()(x), torch.tanh(x), rtol=0, atol=3e-7)
        True
    """

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return torch.tanh(x)
        twice = x.mul_(2) if self.inplace else 2 * x
        return twice.sigmoid_().mul_(2).sub_(1)


ACTIVATIONS = {"tanh": Tanh, "relu": nn.ReLU, "softplus": nn.Softplus, "elu": nn.ELU}


class MLP(nn.Sequential):
    """Linear + activation layers, (..., in_dim) -> (..., hidden_dims[-1]): an ``nn.Sequential`` made by :func:`mlp`.

    Besides ``forward``, :meth:`without_grad` gives the same function for
    repeated use without autograd, e.g. on the pieces of a decoder's K
    importance samples in :class:`~pplvae.distributions.LinearBernoulli`.
    """

    def without_grad(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The function ``self.forward`` for use under ``torch.no_grad()``, constants computed once now.

        For tanh layers it runs their sigmoid form: with tanh(a) = 2 sigmoid(2a) - 1,
        a layer's input h = 2 s - 1 gives W h + b = 2 W s + (b - W 1), so each layer
        is one ``addmm`` (the factors 2 in its scalars, b - W 1 computed here once)
        and one ``sigmoid_`` in place, and only the output is mapped back to
        2 s - 1: 5 kernels for two layers where ``forward`` runs 10. The same
        numbers to float rounding (tests/test_distributions.py). For other
        activations it is ``forward`` itself.

        Returns:
            A function (..., in_dim) -> (..., hidden_dims[-1]) that holds this
            network's weights as they are now (call again after a training step).
        """
        linears = [m for m in self if isinstance(m, nn.Linear)]
        if not linears or not all(isinstance(m, Tanh) for m in self if not isinstance(m, nn.Linear)):
            return self.forward
        layers = []  # (weight.T, bias, alpha, beta): s = sigmoid(beta * bias + alpha * s_in @ weight.T)
        for i, linear in enumerate(linears):
            weight, bias = linear.weight.detach(), linear.bias.detach()
            if i == 0:
                layers.append((weight.t(), bias, 2.0, 2.0))
            else:
                layers.append((weight.t(), bias - weight.sum(1), 4.0, 2.0))
        one = torch.ones((), dtype=linears[-1].weight.dtype, device=linears[-1].weight.device)

        def forward(x: torch.Tensor) -> torch.Tensor:
            s = x.reshape(-1, x.shape[-1])
            for weight_t, bias, alpha, beta in layers:
                s = torch.addmm(bias, s, weight_t, beta=beta, alpha=alpha).sigmoid_()
            return s.lerp_(one, -1.0).view(*x.shape[:-1], s.shape[-1])  # 2 s - 1 = s - (1 - s)

        return forward


def mlp(in_dim: int, hidden_dims: Sequence[int], activation: str = "tanh") -> MLP:
    """A stack of Linear + activation layers, ``in_dim -> hidden_dims[0] -> ... -> hidden_dims[-1]``.

    Raises:
        ValueError: an unknown activation name.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}.")
    layers: list[nn.Module] = []
    for d_in, d_out in zip([in_dim, *hidden_dims], hidden_dims):
        act = Tanh(inplace=True) if activation == "tanh" else ACTIVATIONS[activation]()  # on the Linear's output
        layers += [nn.Linear(d_in, d_out), act]
    return MLP(*layers)


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
    """p(x | z) = prod_d Bernoulli(x_d; sigmoid(logits_d(z))), an MLP (Kingma & Welling 2013, C.1).

    ``forward(z)`` maps (..., z_dim) to a :class:`~pplvae.distributions.LinearBernoulli`,
    i.e. ``Bernoulli(logits).to_event(1)`` with the last layer's logits computed
    lazily and a fast gradient-free ``log_prob``, batch shape (...) and event
    shape (x_dim,); ``mean(z)`` gives the pixel probabilities (..., x_dim).
    Without autograd the hidden layers are lazy too (``MLP.without_grad`` as
    the distribution's ``body``), so that importance sampling with K samples
    runs the whole decoder piece by piece inside ``log_prob``.
    """

    def __init__(self, z_dim: int, x_dim: int, hidden_dims: Sequence[int], activation: str = "tanh"):
        super().__init__()
        self.body = mlp(z_dim, hidden_dims, activation)
        self.logits = nn.Linear(hidden_dims[-1] if hidden_dims else z_dim, x_dim)

    def forward(self, z: torch.Tensor) -> dist.TorchDistribution:
        if torch.is_grad_enabled():
            return LinearBernoulli(self.body(z), self.logits.weight, self.logits.bias, validate_args=False)
        # Without autograd (importance sampling with K samples) the whole decoder runs lazily, piece by piece.
        body = self.body.without_grad()
        return LinearBernoulli(z, self.logits.weight, self.logits.bias, validate_args=False, body=body)

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
        return dist.Normal(loc, scale, validate_args=False).to_event(1)

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        return self._loc_scale(z)[0]


DECODERS = {"bernoulli": BernoulliDecoder, "gaussian": GaussianDecoder}
