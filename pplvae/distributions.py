"""Independent Bernoulli pixels as one event, with a log-density fast enough for K = 5000.

``IndependentBernoulli(logits)`` is the distribution of
``dist.Bernoulli(logits=logits).to_event(1)``: D independent pixels, one event.
Its ``log_prob`` computes the same nats with far fewer transcendental
evaluations when no gradient is needed, which is what bounds the speed of
importance-sampled log p(x) on a CPU (docs/marginal_likelihood.md): with
K = 5000 samples per image, every sample's 784 pixel log-densities cost more
than the decoder's matmuls when computed as ``binary_cross_entropy_with_logits``.

The identity used, for logits l_d and pixels x_d in [0, 1]:

    log p(x | l) = sum_d [x_d l_d - softplus(l_d)]
                 = sum_d l_d (x_d - 1/2) - 1/2 sum_d |l_d| + sum_d log sigmoid(|l_d|),

since softplus(l) = max(l, 0) - log sigmoid(|l|) and max(l, 0) = (l + |l|) / 2.
The first two sums are a dot product and a sum. In the last, sigmoid(|l|)
lies in [1/2, 1], so a product of b such factors stays above 2^-b and cannot
underflow for b up to 64 in float32; the log is taken once per block of b
pixels instead of once per pixel. Each step is a plain elementwise or
reduction kernel (``sigmoid`` is cheap where ``log1p`` and ``tanh`` are not on
some CPUs), all in the input dtype; the result agrees with the per-pixel
formula to float rounding of the sums (tests/test_distributions.py).
"""

from __future__ import annotations

import functools
import math

import pyro.distributions as dist
import torch

__all__ = ["IndependentBernoulli", "bernoulli_log_prob"]

_MAX_BLOCK = 64
_ROW_BLOCK_BYTES_PER_THREAD = 2**19
"""Logits per piece of ``IndependentBernoulli.log_prob`` and torch thread: half a core's L2 cache."""


def bernoulli_log_prob(logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """sum_d [x_d l_d - softplus(l_d)]: the log-density of independent Bernoulli pixels, nats.

    The same value as ``-F.binary_cross_entropy_with_logits(logits, value,
    reduction="none").sum(-1)``, computed by the block-product identity of
    this module's docstring: one ``sigmoid`` per pixel and one ``log`` per
    block of up to 64 pixels.

    Args:
        logits: (..., D) logits l_d of the pixel probabilities sigmoid(l_d).
        value: (..., D) pixels x_d in [0, 1] (binary for a proper Bernoulli;
            grey levels give the usual cross-entropy), broadcastable with ``logits``.

    Returns:
        (...) log p(x | l) in nats, summed over the D pixels: one per batch element.

    Example:
        >>> logits, x = torch.tensor([[2.0, -1.0, 0.0]]), torch.tensor([[1.0, 0.0, 1.0]])
        >>> bernoulli_log_prob(logits, x)
        tensor([-1.1333])
        >>> dist.Bernoulli(logits=logits).log_prob(x).sum(-1)
        tensor([-1.1333])
    """
    magnitude = logits.abs()  # (..., D)
    out = (logits * (value - 0.5)).sum(-1) - 0.5 * magnitude.sum(-1)  # (...)
    d = logits.shape[-1]
    block = _block_size(d, logits.dtype)
    sigmoids = magnitude.sigmoid_().unflatten(-1, (d // block, block))  # (..., D / b, b), in [1/2, 1]
    return out + sigmoids.prod(-1).log_().sum(-1)


@functools.lru_cache(maxsize=None)
def _block_size(d: int, dtype: torch.dtype) -> int:
    """The largest divisor b of D with 2^-b a normal number of ``dtype`` and b <= 64."""
    limit = min(_MAX_BLOCK, int(-math.log2(torch.finfo(dtype).tiny)) // 2)
    return max(b for b in range(1, limit + 1) if d % b == 0)


class IndependentBernoulli(dist.Independent):
    """prod_d Bernoulli(x_d; sigmoid(l_d)) over the last dim: batch shape (...), event shape (D,).

    Equal to ``dist.Bernoulli(logits=logits).to_event(1)`` in every respect
    (sampling, mean, enumeration, masking, expanding) but ``log_prob``: where
    no gradient is needed (under ``torch.no_grad()``, as in
    :func:`pplvae.log_marginal_likelihood`) it is :func:`bernoulli_log_prob`;
    under autograd it is Bernoulli's own fused
    ``binary_cross_entropy_with_logits``, whose backward pass is one kernel.
    Both give the same nats to float rounding.

    Args:
        logits: (..., D) logits of the pixel probabilities.
        validate_args: as for any torch distribution.

    Example:
        >>> p = IndependentBernoulli(torch.zeros(3, 784))
        >>> p.batch_shape, p.event_shape
        (torch.Size([3]), torch.Size([784]))
        >>> with torch.no_grad():
        ...     p.log_prob(torch.ones(784))  # 784 log(1/2)
        tensor([-543.4274, -543.4274, -543.4274])
    """

    def __init__(self, logits: torch.Tensor, validate_args=None):
        super().__init__(dist.Bernoulli(logits=logits, validate_args=validate_args), 1, validate_args)

    @property
    def logits(self) -> torch.Tensor:
        """(..., D) the logits l_d."""
        return self.base_dist.logits

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(IndependentBernoulli, _instance)
        return super().expand(batch_shape, _instance=new)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log p(x) summed over the D pixels: (...) nats, from ``value`` (..., D)."""
        if self._validate_args:
            self._validate_sample(value)
        logits = self.base_dist.logits
        if torch.is_grad_enabled() and logits.requires_grad:
            return super().log_prob(value)
        return _in_row_blocks(logits, value)


def _in_row_blocks(logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """:func:`bernoulli_log_prob` over pieces of logits along dim 0 (512 KiB per torch thread), concatenated.

    On a CPU each piece's temporaries stay in cache, where one pass over a
    (K, N, D) tensor of several MB per elementwise step would go to memory,
    which costs more than the arithmetic. Blocks only on a CPU (a GPU wants
    few large kernels) and along a dim 0 that ``value`` shares or broadcasts;
    otherwise computes in one piece.
    """
    if logits.device.type != "cpu" or logits.dim() < 2:
        return bernoulli_log_prob(logits, value)
    piece_bytes = _ROW_BLOCK_BYTES_PER_THREAD * torch.get_num_threads()  # each thread works on its share
    rows = max(1, piece_bytes // max(1, logits[0].nelement() * logits.element_size()))
    if torch.broadcast_shapes(logits.shape, value.shape) != logits.shape or rows >= logits.shape[0]:
        return bernoulli_log_prob(logits, value)
    split = value.dim() == logits.dim() and value.shape[0] == logits.shape[0]
    return torch.cat([
        bernoulli_log_prob(logits[i : i + rows], value[i : i + rows] if split else value)
        for i in range(0, logits.shape[0], rows)
    ])
