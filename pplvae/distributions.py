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

``Normal(loc, scale)`` is Pyro's ``dist.Normal`` with a no-grad ``log_prob``
that stays cheap after plates expand it: Pyro's plates expand a prior's (D,)
parameters to the (K, N, D) of K importance samples of N datapoints, and
torch's ``Normal.log_prob`` then takes ``log`` and square of the expanded
scale element by element; this one works on the parameters as they were
before expansion (the expanded dims of a tensor have stride 0).

``LinearBernoulli(h, weight, bias)`` is ``IndependentBernoulli`` of the logits
``h @ weight.T + bias``, the decoder's last layer, computed only when needed:
without autograd on a CPU its ``log_prob`` computes them piece by piece, each
piece of logits used while it is in cache and then dropped.

Binary pixels shared by every sample (the K importance samples of one image)
take a shorter road on a CPU. With signs s_d = 2 x_d - 1,

    log p(x | l) = sum_d log sigmoid(s_d l_d),

and for one image the signs fold into the last layer (weight rows and bias
times s_d), so the matmul itself returns the signed logits y = s * l. Then one
``sigmoid_`` in place, products of 8 sigmoids and one ``log`` per product
remain: two passes over the logits instead of five. A product of 8 sigmoids
can underflow where the model is confidently wrong (y_d below about -11 on
all 8 pixels); such rows, found by their products' logs, are recomputed
pixel by pixel with ``logsigmoid``, so the result is exact to float rounding
for any logits (tests/test_distributions.py).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional

import pyro.distributions as dist
import torch
from torch.distributions import constraints
from torch.nn import functional as F

__all__ = ["IndependentBernoulli", "LinearBernoulli", "Normal", "bernoulli_log_prob"]

_MAX_BLOCK = 64
_SIGNED_BLOCK = 8
_ROW_BLOCK_BYTES_PER_THREAD = 2**20
"""Logits per piece of ``IndependentBernoulli.log_prob`` and torch thread: a Zen 4 core's L2 cache (512 KiB was 6 to 7% slower)."""


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
        if self._needs_grad():
            return super().log_prob(value)
        return _in_row_blocks(self, value)

    @property
    def device(self) -> torch.device:
        """The device of the logits."""
        return self.base_dist.logits.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the logits (and of ``log_prob``)."""
        return self.base_dist.logits.dtype

    def logits_of_rows(self, start: int, stop: int) -> torch.Tensor:
        """Logits of the batch elements ``start:stop`` along dim 0: (stop - start, ..., D)."""
        return self.base_dist.logits[start:stop]

    def signed_logits_of_rows(self, signs: torch.Tensor):
        """A function (start, stop) -> the logits of rows ``start:stop`` of dim 0 times ``signs``, a new tensor.

        ``signs`` (..., D), +1 or -1 per pixel, broadcastable to the batch and
        event shape without dim 0.
        """
        return lambda start, stop: self.logits_of_rows(start, stop) * signs

    def _needs_grad(self) -> bool:
        return torch.is_grad_enabled() and self.base_dist.logits.requires_grad


def _in_row_blocks(p: IndependentBernoulli, value: torch.Tensor) -> torch.Tensor:
    """The no-grad ``log_prob`` of ``p`` on a CPU: over pieces along dim 0 (1 MiB of logits per torch thread).

    On a CPU each piece's temporaries stay in cache, where one pass over a
    (K, N, D) tensor of several MB per elementwise step would go to memory,
    which costs more than the arithmetic; for a :class:`LinearBernoulli` the
    piece's logits are computed there too, so the whole (K, N, D) tensor of
    logits never exists. Binary pixels the same along dim 0 use the signed
    form of the module's docstring (:func:`_sum_log_sigmoid_`); other pixels
    :func:`bernoulli_log_prob`. Blocks only on a CPU (a GPU wants few large
    kernels) and along a dim 0 that ``value`` shares or broadcasts; otherwise
    computes :func:`bernoulli_log_prob` in one piece.
    """
    shape = p.batch_shape + p.event_shape
    if p.device.type != "cpu" or len(shape) < 2 or torch.broadcast_shapes(shape, value.shape) != shape:
        return bernoulli_log_prob(p.logits, value)
    piece_bytes = _ROW_BLOCK_BYTES_PER_THREAD * torch.get_num_threads()  # each thread works on its share
    rows = max(1, piece_bytes // max(1, math.prod(shape[1:]) * p.dtype.itemsize))
    signs = _binary_signs(value, len(shape))
    if signs is not None:
        signed_logits = p.signed_logits_of_rows(signs)
        pieces = []
        for i in range(0, shape[0], rows):
            stop = min(i + rows, shape[0])
            out, underflow = _sum_log_sigmoid_(signed_logits(i, stop))
            if underflow.any():  # rare: recompute those rows one log per pixel
                out[underflow] = F.logsigmoid(signed_logits(i, stop)[underflow]).sum(-1)
            pieces.append(out)
        return torch.cat(pieces)
    if rows >= shape[0]:
        return bernoulli_log_prob(p.logits, value)
    split = value.dim() == len(shape) and value.shape[0] == shape[0]
    return torch.cat([
        bernoulli_log_prob(p.logits_of_rows(i, i + rows), value[i : i + rows] if split else value)
        for i in range(0, shape[0], rows)
    ])


def _binary_signs(value: torch.Tensor, batch_event_dims: int):
    """2 x - 1 of pixels ``value`` that are all 0 or 1 and broadcast along dim 0, without that dim; else None.

    ``batch_event_dims`` is the number of dims of the distribution's batch and
    event shape together; ``value`` has at most that many and, where it has
    that many, size 1 in dim 0 (one image for all samples).
    """
    if value.dim() == batch_event_dims:
        if value.shape[0] != 1:
            return None
        value = value[0]
    if not ((value == 0) | (value == 1)).all():
        return None
    return 2 * value - 1


@functools.lru_cache(maxsize=None)
def _signed_block(d: int) -> int:
    """The largest divisor b <= 8 of D: sigmoids multiplied per ``log`` by :func:`_sum_log_sigmoid_`."""
    return max(b for b in range(1, _SIGNED_BLOCK + 1) if d % b == 0)


def _sum_log_sigmoid_(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_d log sigmoid(y_d) over the last dim of ``y`` (..., D), overwriting ``y``: nats (...), and where it underflowed.

    Multiplies b = :func:`_signed_block` (D) sigmoids, pixels D/b apart, per
    ``log``. Returns the sums (...) and a mask (...) of the elements where one
    such product fell below the smallest normal number of the dtype (a model
    confidently wrong on all b pixels), whose sums lost digits or are -inf and
    must be recomputed per pixel.
    """
    d = y.shape[-1]
    b = _signed_block(d)
    logs = y.sigmoid_().unflatten(-1, (b, d // b)).prod(-2).log_()  # (..., D / b)
    underflow = logs.amin(-1) < math.log(torch.finfo(y.dtype).tiny)
    return logs.sum(-1), underflow


class LinearBernoulli(IndependentBernoulli):
    """``IndependentBernoulli(features @ weight.T + bias)``: logits an affine map of features, computed lazily.

    A decoder's last layer and its Bernoulli likelihood in one: the same
    distribution as ``IndependentBernoulli(F.linear(features, weight, bias))``
    (batch shape (...), event shape (D,)), but the (..., D) logits are only
    computed when something asks for them (``logits``, ``mean``, ``sample``,
    or ``log_prob`` under autograd). Without autograd on a CPU, ``log_prob``
    computes them piece by piece, each piece right before its log-density,
    so they stay in cache: with K = 5000 importance samples the (K, N, 784)
    logits are the largest tensor of the estimate (docs/marginal_likelihood.md).

    With ``body``, the features are ``body(features)`` of the given tensor
    (z, say), made just as lazily: the no-grad ``log_prob`` then runs the whole
    decoder piece by piece, z -> hidden layers -> logits -> log-density, so the
    (K, N, H) hidden layers never exist either. ``body`` must map each row
    (..., in) -> (..., H) on its own, as an MLP does.

    Args:
        features: (..., H) the last hidden layer h; with ``body``, (..., in)
            the input of ``body``.
        weight: (D, H) and bias: (D,) the last ``nn.Linear``'s parameters.
        validate_args: as for any torch distribution.
        body: optional rowwise network (..., in) -> (..., H) before the last layer.

    Raises:
        ValueError: weight not (D, H), bias not (D,), or (without ``body``)
            features whose last dim is not H.

    Example:
        >>> layer = torch.nn.Linear(200, 784)
        >>> h, x = torch.randn(5, 3, 200), torch.ones(3, 784)
        >>> p = LinearBernoulli(h, layer.weight, layer.bias)
        >>> p.batch_shape, p.event_shape
        (torch.Size([5, 3]), torch.Size([784]))
        >>> with torch.no_grad():
        ...     torch.allclose(p.log_prob(x), IndependentBernoulli(layer(h)).log_prob(x))
        True
    """

    # Class attributes, since Independent's properties would compute the logits to ask Bernoulli.
    arg_constraints: dict = {}
    support = constraints.independent(constraints.boolean, 1)
    has_rsample = False

    def __init__(
        self,
        features: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        validate_args=None,
        body: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ):
        if weight.dim() != 2 or bias.shape != weight.shape[:1] or (
            body is None and features.shape[-1:] != weight.shape[1:]
        ):
            raise ValueError(
                f"LinearBernoulli needs features (..., H), weight (D, H) and bias (D,), got "
                f"{tuple(features.shape)}, {tuple(weight.shape)} and {tuple(bias.shape)}"
            )
        self.inputs, self.body, self.weight, self.bias = features, body, weight, bias
        self._features = features if body is None else None
        self.reinterpreted_batch_ndims = 1
        self._base, self._validate = None, torch.distributions.Distribution._validate_args  # the global default
        dist.TorchDistribution.__init__(self, features.shape[:-1], weight.shape[:1], validate_args=validate_args)

    @property
    def features(self) -> torch.Tensor:
        """(..., H) the input h of the last layer; with ``body``, ``body(inputs)``, computed on first use."""
        if self._features is None:
            self._features = self.body(self.inputs)
        return self._features

    @property
    def _validate_args(self) -> bool:  # Pyro's Independent keeps it on the base distribution
        return self._validate

    @_validate_args.setter
    def _validate_args(self, value: bool) -> None:
        self._validate = value

    @property
    def base_dist(self) -> dist.Bernoulli:
        """The pixels' ``Bernoulli(logits)``, batch shape (..., D); computes the logits on first use."""
        if self._base is None:
            logits = F.linear(self.features, self.weight, self.bias)
            self._base = dist.Bernoulli(logits=logits, validate_args=self._validate_args)
        return self._base

    @base_dist.setter
    def base_dist(self, value: dist.Bernoulli) -> None:
        self._base = value

    @property
    def device(self) -> torch.device:
        """The device of the features."""
        return self.inputs.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the logits (the last layer's)."""
        return self.weight.dtype

    def _features_of_rows(self, start: int, stop: int) -> torch.Tensor:
        if self._features is not None:
            return self._features[start:stop]
        return self.body(self.inputs[start:stop])

    def logits_of_rows(self, start: int, stop: int) -> torch.Tensor:
        """Logits of the batch elements ``start:stop`` along dim 0: (stop - start, ..., D), computed now."""
        if self._base is not None:
            return self._base.logits[start:stop]
        return F.linear(self._features_of_rows(start, stop), self.weight, self.bias)

    def signed_logits_of_rows(self, signs: torch.Tensor):
        """A function (start, stop) -> the logits of rows ``start:stop`` of dim 0 times ``signs``, computed then.

        Where ``signs`` is one image's (D,), they are folded into the layer
        (rows of ``weight`` and ``bias`` times s_d), so each call is one
        matmul; otherwise the new logits are multiplied by them in place.
        """
        if self._base is not None:
            return super().signed_logits_of_rows(signs)
        if signs.numel() != signs.shape[-1]:
            return lambda start, stop: self.logits_of_rows(start, stop).mul_(signs)
        signs = signs.reshape(-1)
        weight, bias = self.weight * signs.unsqueeze(-1), self.bias * signs  # (D, H), (D,)
        return lambda start, stop: F.linear(self._features_of_rows(start, stop), weight, bias)

    def _needs_grad(self) -> bool:
        if not torch.is_grad_enabled():
            return False
        return any(t.requires_grad for t in (self.features, self.weight, self.bias))

    def __repr__(self) -> str:  # Independent's would compute the logits to show them
        inputs = "features" if self.body is None else "inputs of body"
        return (f"LinearBernoulli({inputs}: {tuple(self.inputs.shape)}, weight: {tuple(self.weight.shape)}, "
                f"batch_shape: {tuple(self.batch_shape)}, event_shape: {tuple(self.event_shape)})")

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        if self._base is not None:  # the logits exist already: expand them
            return IndependentBernoulli(self._base.logits, self._validate_args).expand(batch_shape)
        body = None if self._features is not None else self.body
        inputs = self.inputs if body is not None else self._features
        inputs = inputs.expand(batch_shape + inputs.shape[-1:])
        return LinearBernoulli(inputs, self.weight, self.bias, validate_args=self._validate_args, body=body)


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class Normal(dist.Normal):
    """N(x; loc, scale^2) elementwise: Pyro's ``dist.Normal``, whose no-grad ``log_prob`` skips expanded dims.

    The same distribution as ``pyro.distributions.Normal`` in every respect
    but the cost of ``log_prob`` without autograd: there it computes

        log N(x; loc, scale^2) = -((x - loc) / scale)^2 / 2 - log scale - log(2 pi) / 2   (nats)

    with ``log scale`` taken on the parameters as given, not on the copies a
    plate's ``expand`` makes of them. In :func:`pplvae.log_marginal_likelihood`
    with K = 5000, torch's ``Normal.log_prob`` took 8 to 12% of the time of
    Burda et al.'s VAE on two CPU threads (``benchmarks/marginal_ceiling.py``),
    most of it in ``log`` and square of the (K, N, z_dim) expanded scale. Under
    autograd it is torch's own ``log_prob``. Both agree to float rounding
    (tests/test_distributions.py).

    Args:
        loc: (...) means; scale: (...) standard deviations > 0, broadcastable.

    Example:
        >>> p = Normal(torch.zeros(50), torch.ones(50)).expand((5000, 3, 50))
        >>> with torch.no_grad():
        ...     p.log_prob(torch.zeros(5000, 3, 50)).sum(-1)[0]
        tensor([-45.9469, -45.9469, -45.9469])
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log N(value; loc, scale^2), elementwise, nats: the broadcast shape of ``value`` and the batch shape."""
        if self._validate_args:
            self._validate_sample(value)
        if torch.is_grad_enabled() and any(t.requires_grad for t in (value, self.loc, self.scale)):
            return super().log_prob(value)
        if value.shape != torch.broadcast_shapes(value.shape, self.batch_shape):  # value broadcast up: rare
            return super().log_prob(value)
        loc, scale = _unexpanded(self.loc), _unexpanded(self.scale)
        out = (value - loc).div_(scale)  # value's shape, which holds those of loc and scale
        return out.square_().mul_(-0.5).sub_(scale.log().add_(_HALF_LOG_2PI))


def _unexpanded(t: torch.Tensor) -> torch.Tensor:
    """A view of ``t`` with size 1 in every dim of stride 0 (the dims ``expand`` added), broadcastable to ``t``."""
    if all(stride != 0 for stride in t.stride()):
        return t
    return t.as_strided([1 if stride == 0 else size for size, stride in zip(t.shape, t.stride())], t.stride())
