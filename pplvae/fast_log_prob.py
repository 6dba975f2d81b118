"""Exact, cheaper log-densities for the distributions of plain Pyro models, applied by a handler.

Importance sampling with K = 5000 samples per datapoint (Burda et al. 2016,
section 5.2) scores every sample of every site without autograd, and a few of
those scores dominate its time on a CPU. :class:`FastLogProbMessenger` gives
the sites whose distribution it recognizes the same log-density by cheaper
arithmetic, without the model knowing: the model keeps its
``pyro.distributions`` and the handler only changes how a site is scored
inside the estimator. Anything it does not recognize is scored by its own
``log_prob``.

Recognized (by exact type; a subclass may have its own ``log_prob``):

* ``Bernoulli`` (also ``.to_event(n)``), on a CPU. For logits l_d and pixels
  x_d in [0, 1], since softplus(l) = max(l, 0) + log(1 + exp(-|l|)),

      log p(x | l) = sum_d [x_d l_d - softplus(l_d)]
                   = sum_d l_d (x_d - 1/2) - 1/2 sum_d |l_d| - sum_d log(1 + exp(-|l_d|)).

  1 + exp(-|l|) lies in [1, 2], so a product of b such factors stays below
  2^b and cannot overflow while 2^b is well inside the dtype's range; the
  log is taken once per block of b pixels instead of once per pixel (one
  ``exp`` per pixel in place of ``binary_cross_entropy_with_logits``'s
  ``exp`` and ``log1p``, and no division as in a ``sigmoid``). The first
  sum is a matrix-vector product where the pixels repeat over samples (K
  samples of one datapoint's logits against its pixels), the other two run
  on one temporary, |l|, transformed in place: one new tensor of the logits'
  size where ``binary_cross_entropy_with_logits`` writes four, each of which
  costs fresh memory pages on a CPU once the logits of thousands of samples
  outgrow the allocator's reused blocks. On a GPU these kernels are
  memory-bound and the fused cross-entropy is one pass, so Bernoulli sites
  keep their own ``log_prob`` there.
* ``Normal`` (also ``.to_event(n)``) whose parameters a plate expanded:
  ``log scale`` is computed on the parameters before ``expand`` (the expanded
  dims have stride 0), not once per sample. A prior's (z_dim,) scale expanded
  to K samples of N datapoints costs z_dim logarithms instead of K N z_dim.

Both agree with the distributions' own ``log_prob`` to float rounding
(tests/test_fast_log_prob.py, also for saturated and underflowing logits).
The handler takes effect where no gradient is recorded (under
``torch.no_grad()``), as in :func:`pplvae.log_marginal_likelihood`; under
autograd every site keeps its own ``log_prob``.

For training, :func:`log_prob_sum` gives the sum of a Bernoulli or Normal
site's log-density over the minibatch in fewer operators and autograd nodes
(the fused cross-entropy; one sum instead of a per-datapoint sum and a
total), with the same value and gradients to float rounding; the trainer's
:class:`pplvae.FastTrace_ELBO` uses it.

References:
    [1] Y. Burda, R. Grosse, R. Salakhutdinov (2016), "Importance Weighted
        Autoencoders", ICLR, section 5.2.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import pyro.distributions as dist
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from torch.nn import functional as F

__all__ = ["FastLogProbMessenger", "bernoulli_log_prob", "fast_log_prob", "log_prob_sum",
           "normal_log_prob_sum_at_draw"]

_MAX_BLOCK = 64
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def bernoulli_log_prob(logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """sum_d [x_d l_d - softplus(l_d)]: the log-density of independent Bernoulli pixels, nats.

    The same value as ``dist.Bernoulli(logits=logits).log_prob(value).sum(-1)``
    (to float rounding), by the block-product identity of this module's
    docstring: one ``exp`` per pixel and one ``log`` per block of pixels.

    Args:
        logits: (..., D) logits l_d of the pixel probabilities sigmoid(l_d).
        value: (..., D) pixels x_d in [0, 1], broadcastable with ``logits``.

    Returns:
        (...) log p(x | l) in nats, summed over the D pixels (the broadcast
        batch shape of ``logits`` and ``value``).

    Example:
        >>> logits, x = torch.tensor([[2.0, -1.0, 0.0]]), torch.tensor([[1.0, 0.0, 1.0]])
        >>> bernoulli_log_prob(logits, x)
        tensor([-1.1333])
        >>> dist.Bernoulli(logits=logits).log_prob(x).sum(-1)
        tensor([-1.1333])
    """
    d = logits.shape[-1]
    block = _block_size(d, logits.dtype)
    terms = _inner(logits, value - 0.5)  # sum_d l_d (x_d - 1/2)
    magnitude = logits.abs()
    terms = terms - 0.5 * magnitude.sum(-1)
    factors = magnitude.neg_().exp_().add_(1).unflatten(-1, (d // block, block))  # 1 + exp(-|l|), in [1, 2]
    return terms - factors.prod(-1).log_().sum(-1)


def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_d a[..., d] b[..., d], broadcast: (...) the broadcast of both shapes without the last dim.

    Where ``b``'s rows repeat over ``a``'s leading dims (observed pixels of n
    datapoints against K samples of logits), a matrix-vector product per
    datapoint: one pass over ``a`` and no temporary of its size.
    """
    shape = torch.broadcast_shapes(a.shape, b.shape)[:-1]
    repeated = b
    while repeated.dim() > 1 and repeated.shape[0] == 1:
        repeated = repeated[0]
    lead = a.dim() - repeated.dim()
    if b.dim() == 0 or lead < 1 or a.shape[lead:] != repeated.shape or a.dtype != b.dtype:
        return (a * b).sum(-1)
    rows = repeated.reshape(-1, b.shape[-1])  # (n, D)
    samples = a.reshape(-1, *rows.shape)  # (k, n, D)
    if len(rows) == 1:
        out = samples[:, 0] @ rows[0]  # (k,)
    else:
        out = (samples.transpose(0, 1) @ rows.unsqueeze(-1)).squeeze(-1).T  # (k, n)
    return out.reshape(shape)


@functools.lru_cache(maxsize=None)
def _block_size(d: int, dtype: torch.dtype) -> int:
    """The largest divisor b of D with b <= 64 and 2^(2b) finite in ``dtype`` (b <= 63 in float32)."""
    limit = min(_MAX_BLOCK, int(math.log2(torch.finfo(dtype).max)) // 2)
    return max(b for b in range(1, limit + 1) if d % b == 0)


def normal_log_prob(loc: torch.Tensor, scale: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """log N(value; loc, scale^2) elementwise, nats, with ``log scale`` taken before any ``expand``.

    Args:
        loc, scale: (...) means and standard deviations (> 0), possibly
            expanded views (stride 0 in the expanded dims).
        value: (...) broadcastable to their shape and not larger.

    Returns:
        (...) log-densities: -((x - loc) / scale)^2 / 2 - log scale - log(2 pi) / 2.

    Example:
        >>> loc, scale = torch.zeros(2).expand(3, 2), torch.ones(2).expand(3, 2)
        >>> normal_log_prob(loc, scale, torch.zeros(3, 2))[0]
        tensor([-0.9189, -0.9189])
    """
    loc, scale = _unexpanded(loc), _unexpanded(scale)
    out = (value - loc).div_(scale)
    return out.square_().mul_(-0.5).sub_(scale.log().add_(_HALF_LOG_2PI))


def _unexpanded(t: torch.Tensor) -> torch.Tensor:
    """A view of ``t`` with size 1 in every dim of stride 0 (the dims ``expand`` added), broadcastable to ``t``."""
    for dim, stride in enumerate(t.stride()):
        if stride == 0:  # narrow, not as_strided: graph compilers treat as_strided as relative to the storage
            t = t.narrow(dim, 0, 1)
    return t


def base_distribution(fn) -> tuple:
    """``(base, event_dims)``: ``fn`` without its ``Independent`` wrappers (``.to_event(n)``, possibly nested)."""
    event_dims = 0
    while type(fn) is dist.Independent:
        event_dims += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    return fn, event_dims


def log_prob_sum(fn, value: torch.Tensor) -> Optional[torch.Tensor]:
    """``fn.log_prob(value).sum()`` in fewer operators (and autograd nodes), or None.

    For the training loss, where every site's log-density is summed over the
    minibatch and recorded by autograd: Pyro's ``log_prob`` of a
    ``.to_event(n)`` site reshapes and sums per datapoint, then the loss sums
    again, and a Normal's is nine elementwise operators. Recognized (by exact
    type; a subclass may have its own ``log_prob``):

    * ``Bernoulli`` (also ``.to_event(n)``): ``-binary_cross_entropy_with_logits(
      logits, value, reduction="sum")``, one fused operator;
    * ``Normal`` (also ``.to_event(n)``): ``-1/2 sum ((value - loc) / scale)^2
      - sum log scale - n/2 log(2 pi)`` over the n elements.

    Both with ``value`` of the distribution's full shape (batch_shape +
    event_shape), as at a plate's sample site; anything else gives None.
    The value and its gradients equal those of the plain sum to float
    rounding (tests/test_fast_log_prob.py), with or without autograd.

    Args:
        fn: a distribution, as at a Pyro sample site.
        value: the site's value, shape ``fn.batch_shape + fn.event_shape``.

    Returns:
        A scalar tensor, nats summed over every element, or None.

    Raises:
        ValueError: where ``fn`` validates its arguments and ``value`` is
            outside its support (as ``log_prob`` raises).
    """
    base, _ = base_distribution(fn)
    if type(base) not in (dist.Bernoulli, dist.Normal) or not isinstance(value, torch.Tensor):
        return None
    if value.shape != base.batch_shape:  # a Bernoulli's or Normal's event_shape is ()
        return None
    if base._validate_args:
        base._validate_sample(value)
    if type(base) is dist.Bernoulli:
        return -F.binary_cross_entropy_with_logits(base.logits, value, reduction="sum")
    squares = ((value - base.loc) / base.scale).square().sum()
    return squares * -0.5 - (base.scale.log().sum() + value.numel() * _HALF_LOG_2PI)


def normal_log_prob_sum_at_draw(scale: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``sum log N(z; loc, scale^2)`` at the draw z = loc + scale * eps, in nats.

    It equals ``-1/2 sum eps^2 - sum log scale - n/2 log(2 pi)`` over the n elements.

    As a function of loc and scale this *is* the Normal's log-density at its
    own reparameterized draw, not an approximation: (z - loc) / scale = eps
    for every loc and scale, so the gradients through z and directly through
    loc and scale, which ``Normal.log_prob(z)`` computes separately, cancel
    exactly. Three operators on ``scale`` instead of nine on z, loc and scale.

    Args:
        scale: (...) the standard deviations (> 0) the draw used.
        eps: (...) the standard-normal noise of the draw, the same shape.

    Returns:
        A scalar tensor: nats summed over the n elements.
    """
    return eps.square().sum() * -0.5 - (scale.log().sum() + eps.numel() * _HALF_LOG_2PI)


def fast_log_prob(fn, value: torch.Tensor) -> Optional[torch.Tensor]:
    """The log-density ``fn.log_prob(value)`` by the cheaper exact forms of this module, or None.

    Args:
        fn: a distribution, as at a Pyro sample site.
        value: the site's value, (sample_shape + batch_shape + event_shape).

    Returns:
        The same tensor as ``fn.log_prob(value)`` (shape ``batch_shape``
        broadcast with ``value``'s, nats) up to float rounding, or None where
        ``fn`` is not a recognized distribution or autograd is recording (then
        ``fn.log_prob`` applies).

    Raises:
        ValueError: where ``fn`` validates its arguments (``validate_args``,
            or Pyro's validation enabled) and ``value`` is outside its support.
    """
    if torch.is_grad_enabled() or not isinstance(value, torch.Tensor):
        return None
    base, event_dims = base_distribution(fn)
    bernoulli = type(base) is dist.Bernoulli and value.device.type == "cpu" and event_dims > 0
    normal = type(base) is dist.Normal and any(0 in t.stride() for t in (base.loc, base.scale))
    if not (bernoulli or normal):
        return None
    try:
        full = torch.broadcast_shapes(value.shape, base.batch_shape)
    except RuntimeError:
        return None  # log_prob raises its own error
    if base._validate_args:
        base._validate_sample(value)
    if bernoulli:
        out = bernoulli_log_prob(base.logits, value)  # (full[:-1]): summed over the last dim
        summed = event_dims - 1
    else:
        out = normal_log_prob(base.loc, base.scale, value)  # broadcastable to full
        summed = event_dims
    if summed:
        out = out.sum(tuple(range(-summed, 0)))
    return out.expand(full[: len(full) - event_dims])


class FastLogProbMessenger(Messenger):
    """A handler that scores recognized sample sites by :func:`fast_log_prob`, without autograd.

    After each sample site it computes the site's log-density by
    :func:`fast_log_prob` where that applies and stores it, scaled and masked
    as Pyro scales and masks it, as the site's ``log_prob`` (and its
    ``unscaled_log_prob``), so that ``Trace.compute_log_prob`` of a trace
    recorded inside this handler uses it. Sampling, values and every other
    site are unchanged. Used by :func:`pplvae.log_marginal_likelihood`.

    Example:
        >>> import pyro
        >>> def model():
        ...     with pyro.plate("samples", 5000), pyro.plate("data", 3):
        ...         pyro.sample("z", dist.Normal(torch.zeros(50), 1.0).to_event(1))
        >>> with torch.no_grad(), FastLogProbMessenger():
        ...     trace = pyro.poutine.trace(model).get_trace()
        >>> trace.compute_log_prob()
        >>> plain = dist.Normal(0.0, 1.0).log_prob(trace.nodes["z"]["value"]).sum(-1)
        >>> torch.allclose(trace.nodes["z"]["log_prob"], plain)
        True
    """

    def _pyro_post_sample(self, msg) -> None:
        if isinstance(msg["fn"], _Subsample) or "log_prob" in msg:
            return
        log_p = fast_log_prob(msg["fn"], msg["value"])
        if log_p is not None:
            msg["unscaled_log_prob"] = log_p
            msg["log_prob"] = scale_and_mask(log_p, msg["scale"], msg["mask"])
            msg["log_prob_sum"] = msg["log_prob"].sum()
