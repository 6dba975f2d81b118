"""Importance-sampled log marginal likelihood per datapoint, with IWAE bounds and diagnostics.

For a model p(x, z) and a guide q(z | x) with the datapoints in one plate,
:func:`log_marginal_likelihood` estimates, for every datapoint i,

    log p̂(x_i) = logsumexp_k [log p(x_i, z_ik) - log q(z_ik | x_i)] - log K,   z_ik ~ q(. | x_i),

the K-sample importance-weighted bound of [1], eq. (8), which Burda et al. use
with K = 5000 to report test log-likelihoods ([1], section 5.2). It is a lower
bound in expectation and converges to log p(x_i) as K grows.

It works from Pyro traces: the K samples are a vectorized ``"particles"``
plate outside every plate of the model (as in Pyro's
``vectorized_importance_weights``); the guide is traced, the model replayed
against it, and every site's log-density is summed over everything but the
particle and data dims, which gives one log-weight per sample per datapoint.
Pyro's ``Importance`` and ``vectorized_importance_weights`` sum over the data
plate, i.e. weight whole batches; that is a different (much worse) estimator.
The sites are scored under :class:`~pplvae.fast_log_prob.FastLogProbMessenger`,
which gives the Bernoulli and expanded Normal sites of plain Pyro models the
same log-densities by cheaper exact arithmetic; the model code is unchanged.

References
    [1] Y. Burda, R. Grosse, R. Salakhutdinov (2016), "Importance Weighted
        Autoencoders", ICLR, eq. (8) and section 5.
    [2] A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry (2024), "Pareto
        Smoothed Importance Sampling", JMLR 25(72), section 3 (the tail size
        M = min(K/5, 3 sqrt(K)) and the diagnostic k-hat).
    [3] A. Kong (1992), "A note on importance sampling using standardized
        weights"; the effective sample size (sum w)^2 / sum w^2.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Optional

import pandas as pd
import pyro
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.util import site_is_subsample

from pplvae.compiled_chunks import CompiledLogWeights, program_signature
from pplvae.data.batches import check_finite
from pplvae.fast_log_prob import FastLogProbMessenger, base_distribution

__all__ = ["MarginalLikelihood", "default_memory_budget", "log_marginal_likelihood"]

CPU_MEMORY_BYTES_PER_THREAD = 64 * 2**20
"""Default budget for one chunk on a CPU, per torch thread: 64 MiB (128 MiB on two threads).

Large enough that the fixed cost of one call of model and guide (Pyro's
tracing, the guide's encoder) is small beside a chunk's arithmetic: Burda et
al.'s 784-200-200-50 VAE gets chunks of 2500 samples of one image on one
thread, all K = 5000 on two. More threads finish a chunk sooner, so they get
larger chunks. Not larger: a plain model's decoder writes its (k, n, 784)
logits as a new tensor in every chunk, and tensors of tens of MB come to the
process as fresh memory pages each time (three images of 5000 samples per
chunk on two threads, 47 MB of logits, ran at 0.7 of the speed of one image
per chunk on a 2-core Xeon).
"""
CUDA_MEMORY_BYTES = 4 * 2**30
"""Default budget for one chunk on a GPU: 4 GiB, or a quarter of the free GPU memory if less."""

BOUND_SIZES = (1, 5, 50)
"""Group sizes k of the IWAE bounds reported beside the K-sample estimate."""

# A trace shows the value, parameters and log-density of each site, not the
# networks' hidden activations or the temporaries of ``log_prob``. One chunk's
# memory is estimated as this many copies of every site's batch+event tensor.
_WORKING_COPIES = 4
# Log-weights of several chunks are summarized in one update (a few small
# kernels each, paid per update rather than per chunk), at most this many at
# once: the sample chunks of one data chunk, and the whole (K, n) log-weights
# of consecutive data chunks side by side (the summaries are per datapoint).
_PENDING_WEIGHTS = 2**20
_PROBE_SIZE = 4
_MIN_TAIL = 10


@dataclass
class MarginalLikelihood:
    """Per-datapoint estimates of :func:`log_marginal_likelihood`; all in nats per datapoint.

    Attributes:
        log_px: (N,) the K-sample estimate log p̂(x_i) ([1] eq. (8) with k = K).
        bounds: k -> (N,) IWAE-k bound for k in (1, 5, 50, K) where k <= K, from
            the same K draws: the mean over the floor(K/k) disjoint groups of k
            consecutive samples of logsumexp(group) - log k (the last K mod k
            samples are left out of that mean). ``bounds[1]`` is the ELBO
            averaged over all K samples; ``bounds[K]`` is ``log_px``. Where
            the groups nest (50 divides K), Jensen's inequality orders them per
            datapoint, ELBO <= IWAE-5 <= IWAE-50 <= log_px, for every draw.
        ess: (N,) effective sample size (sum_k w_ik)^2 / sum_k w_ik^2, in [1, K] [3].
        pareto_k: (N,) the Pareto-k-hat of the weights of each datapoint [2],
            fitted as ``pyro.ops.stats.fit_generalized_pareto`` fits (Zhang &
            Stephens 2009; here for all datapoints at once) to the largest
            M = ceil(min(K/5, 3 sqrt(K))) weights as in
            ``pyro.infer.importance.psis_diagnostic``; NaN where fewer than 10
            weights lie strictly above the cutoff (K < 50, or tied weights as
            under the exact posterior). Above 0.7 the estimate is unreliable.
        num_samples: K.
        chunk_shape: (particles, datapoints) evaluated per call of model and guide.
    """

    log_px: torch.Tensor
    bounds: dict[int, torch.Tensor]
    ess: torch.Tensor
    pareto_k: torch.Tensor
    num_samples: int
    chunk_shape: tuple[int, int] = field(default=(0, 0))

    @property
    def num_data(self) -> int:
        """N, the number of datapoints."""
        return self.log_px.shape[0]

    @property
    def stderr(self) -> float:
        """Standard error of ``log_px.mean()`` over the data set, nats.

        ``std(log_px, ddof=1) / sqrt(N)``: the datapoint-to-datapoint spread,
        which includes each estimate's own Monte Carlo noise. NaN when N = 1.
        """
        if self.num_data < 2:
            return float("nan")
        return (self.log_px.std() / math.sqrt(self.num_data)).item()

    def to_frame(self) -> pd.DataFrame:
        """One-row table of data-set means, nats per datapoint.

        Columns: ``elbo``, ``iwae_5``, ``iwae_50`` (where K allows), ``iwae_K``
        (the K-sample bound, equal to ``log_px``), ``log_px``, ``log_px_stderr``,
        ``ess_mean``, ``ess_min``, ``pareto_k_max`` (NaN-ignoring), ``num_samples``,
        ``num_data``.
        """
        row = {}
        for k, bound in sorted(self.bounds.items()):
            name = "elbo" if k == 1 else f"iwae_{k}"
            if k == self.num_samples and k != 1:
                name = "iwae_K"
            row[name] = bound.mean().item()
        row["log_px"] = self.log_px.mean().item()
        row["log_px_stderr"] = self.stderr
        row["ess_mean"] = self.ess.mean().item()
        row["ess_min"] = self.ess.min().item()
        finite_k = self.pareto_k[~torch.isnan(self.pareto_k)]
        row["pareto_k_max"] = finite_k.max().item() if finite_k.numel() else float("nan")
        row["num_samples"] = self.num_samples
        row["num_data"] = self.num_data
        return pd.DataFrame([row])


def log_marginal_likelihood(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 1000,
    plate_name: str = "data",
    max_memory_bytes: Optional[int] = None,
    progress: Optional[Callable[[int], None]] = None,
    validate: bool = False,
    compile: bool = False,
    **kwargs,
) -> MarginalLikelihood:
    """Estimate log p(x_i) for every datapoint by importance sampling from the guide.

    ``model(*args, **kwargs)`` and ``guide(*args, **kwargs)`` must put every
    sample site inside the plate ``plate_name`` (other plates, e.g. over pixels,
    may nest inside it and are summed over); the guide must sample every latent
    site of the model and nothing else. Any number of latent sites, extra
    arguments (labels, observed pixels) and any likelihood work alike.

    Plate indices and scales: in every chunk the data plate yields the global
    indices of the chunk's rows (``with pyro.plate("data", len(x)) as idx``
    gives i for row i of the whole data, whatever the chunking), so guides with
    per-datapoint parameters indexed by the plate are exact. ``poutine.scale``
    factors are ignored (the result is log p(x) of the unscaled programs);
    masks apply.

    Data layout: the first tensor among ``args`` (then ``kwargs``) fixes
    N = its ``shape[0]``, the size the data plate must have; every tensor
    argument whose leading size is N holds one row per datapoint and is sliced
    along dim 0 into data chunks, every other argument is passed unchanged.

    Chunking: the K samples and N datapoints are split into chunks of
    ``(k_chunk, n_chunk)`` such that a chunk's estimated memory (four copies
    of every site's batch+event tensor, from a probe run on 4 datapoints) is at
    most ``max_memory_bytes`` (the K samples split evenly where they need
    several chunks); hidden activations of networks are not seen
    by a trace, so the budget is a target, not a hard cap. Results are
    accumulated in streaming form (float64 running max, sums and top-M tail
    per datapoint), never materialising the (K, N) log-weights. Given the same
    log-weights, any chunking gives the same results up to float rounding;
    the draws themselves come from the global torch RNG in chunk order, so with
    ``pyro.set_rng_seed`` a run is reproducible for a fixed chunking, while
    a different chunking draws different (equally distributed) samples.

    Runs under ``torch.no_grad()`` and ``poutine.block()`` on whatever device the
    model and the arguments live on, with the sites scored by
    :class:`~pplvae.fast_log_prob.FastLogProbMessenger` (the same nats as their
    own ``log_prob``, to float rounding).

    Args:
        model: the model program p(x, z); takes ``*args, **kwargs``.
        guide: the guide program q(z | x); same arguments.
        num_samples: K >= 1, the number of importance samples per datapoint.
        plate_name: name of the plate over datapoints.
        max_memory_bytes: memory budget for one chunk, bytes; None:
            :func:`default_memory_budget` of the data's device (64 MiB per
            torch thread on a CPU, up to 4 GiB on a GPU).
        progress: called after every chunk with the number of (sample, datapoint)
            pairs just done; they add up to K * N.
        validate: keep Pyro's and torch's checks (``pyro.enable_validation``:
            NaN warnings, argument and support checks) on in every chunk, and
            check every observed value against its distribution's support
            first. By default they run, as set globally, on the probe run over
            the first 4 datapoints only (observed values outside the support
            of a distribution that validates its samples included: grey pixels
            under a Bernoulli are refused), and are off in the chunks, as in
            training (:class:`pplvae.TrainConfig`'s ``validate``).
        compile: score the chunks by a compiled graph
            (:mod:`pplvae.compiled_chunks`): one chunk recorded with
            ``make_fx`` and compiled by Inductor (``torch.compile``'s
            compiler), kept for the process and reused by later calls while
            the program (operators, parameters by identity) and, on a CPU,
            torch's thread count are the same; weights changed in place are
            read at run time. Without ``max_memory_bytes``, three chunk
            shapes are timed on the first datapoints and the fastest is kept:
            a quarter, a sixteenth and a 64th of the default budget on a CPU
            (a compiled chunk has a fifth of a Pyro run's fixed cost), the
            default budget, a quarter and a sixteenth of it on a GPU. The
            same draws and numbers as the uncompiled run with the same chunk
            shape, to float rounding. The first call of a program pays the
            compiles (seconds to a minute on a CPU). Needs model and guide
            without data-dependent Python control flow (one recorded chunk
            serves all).

    Returns:
        :class:`MarginalLikelihood` with tensors of shape (N,), float64, nats
        per datapoint.

    Raises:
        ValueError: ``num_samples`` not an integer >= 1; ``max_memory_bytes``
            below 1; no tensor argument, or one with 0 rows; NaN or infinite
            values in a data argument (the message names the rows); an observed
            value outside its distribution's support (e.g. grey levels under a
            Bernoulli likelihood): in any row with ``validate=True``, in the
            first 4 rows by default (see ``validate``); no plate
            ``plate_name`` in the traces or one of another size than N, or
            subsampled; a sample site outside that plate; a latent site of the
            model that the guide does not sample, or a guide site that the model
            does not have.

    Example:
        >>> import pyro.distributions as dist
        >>> def model(x):
        ...     with pyro.plate("data", x.shape[0]):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def guide(x):  # the exact posterior N(x/2, 1/2)
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("z", dist.Normal(x / 2, 0.5**0.5))
        >>> x = torch.tensor([0.0, 2.0])
        >>> result = log_marginal_likelihood(model, guide, x, num_samples=10)
        >>> result.log_px  # log N(x; 0, 2)
        tensor([-1.2655, -2.2655], dtype=torch.float64)
    """
    num_data, device = _check_arguments(model, guide, args, kwargs, num_samples, max_memory_bytes, validate,
                                        plate_name)
    budget_given = max_memory_bytes is not None
    if not budget_given:
        max_memory_bytes = default_memory_budget(device)
    with torch.no_grad(), poutine.block():
        try:
            probe = _probe(model, guide, args, kwargs, num_data, plate_name)
        except ValueError as error:  # the model's own checks see the probe's slice: give the caller's shapes
            shapes = [tuple(v.shape) for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]
            raise ValueError(f"{error}\n(on the first {min(num_data, _PROBE_SIZE)} rows of the arguments "
                             f"passed, of shapes {shapes})") from error
        k_chunk, n_chunk = _chunk_shape(num_samples, num_data, probe.cell_bytes, max_memory_bytes)
        group_sizes = tuple(k for k in BOUND_SIZES if k < num_samples)
        tail_size = _tail_size(num_samples) + 1  # the M largest and the cutoff below them
        out = None  # per-datapoint results, filled chunk by chunk
        checks = contextlib.nullcontext() if validate else pyro.validation_enabled(False)
        log_weights = functools.partial(_log_weights, model, guide, plate_name=plate_name,
                                        max_plate_nesting=probe.max_plate_nesting)
        indices = torch.arange(num_data, device=device)  # the data plate's indices, sliced per chunk

        def first_rows(n):
            return (*_slice_data(args, kwargs, num_data, 0, n), indices[:n])

        with checks, FastLogProbMessenger():
            if compile:
                log_weights = CompiledLogWeights(log_weights, program_signature(log_weights, *first_rows(1)))
                if not budget_given:  # a few chunk shapes are timed; the fastest is kept
                    # On a CPU the default budget is sized for a run of Pyro's handlers per chunk (2.3 ms
                    # on a 2-core Xeon); a compiled chunk costs a fifth of that besides its arithmetic,
                    # and the default budget's tensors of several MB came to the process as fresh pages
                    # at every compiled chunk (1914 page faults per chunk of 2500 samples of a 784-pixel
                    # decoder), which trials on one datapoint do not show: there the trials start at a
                    # quarter of it.
                    first = 1 if device.type == "cpu" else 0
                    shapes = [_chunk_shape(num_samples, num_data, probe.cell_bytes, max_memory_bytes / 4**i)
                              for i in range(first, first + 3)]
                    shapes = list(dict.fromkeys(shapes))
                    k_chunk, n_chunk = log_weights.fastest_chunk_shape(shapes, num_samples, first_rows, device)

            def write(acc, start, stop):
                nonlocal out  # written into tensors allocated once, not kept as small per-chunk tensors
                chunk = acc.finish()
                if out is None:
                    out = {key: value.new_empty(value.shape[:-1] + (num_data,)) for key, value in chunk.items()}
                for key, value in chunk.items():
                    out[key][..., start:stop] = value

            # A data chunk whose K log-weights take more than one update streams through its own
            # summaries; smaller ones are summarized side by side, several data chunks per update.
            streamed = num_samples * n_chunk > _PENDING_WEIGHTS
            held, held_start = [], 0  # (K, n) log-weights of the data chunks from held_start on
            for start in range(0, num_data, n_chunk):
                stop = min(start + n_chunk, num_data)
                chunk_args, chunk_kwargs = _slice_data(args, kwargs, num_data, start, stop)
                acc = _StreamingWeights(group_sizes, tail_size)
                parts, pending = [], 0  # (k, n) log-weights summarized together, up to _PENDING_WEIGHTS of them
                for k_start in range(0, num_samples, k_chunk):
                    k = min(k_chunk, num_samples - k_start)
                    parts.append(log_weights(chunk_args, chunk_kwargs, indices[start:stop], k))  # (k, stop - start)
                    pending += parts[-1].numel()
                    if streamed and (pending >= _PENDING_WEIGHTS or k_start + k == num_samples):
                        acc.update(torch.cat(parts) if len(parts) > 1 else parts[0])
                        parts, pending = [], 0
                    if progress is not None:
                        progress(k * (stop - start))
                if streamed:
                    write(acc, start, stop)
                    continue
                held.append(torch.cat(parts) if len(parts) > 1 else parts[0])  # (K, stop - start)
                if sum(h.numel() for h in held) >= _PENDING_WEIGHTS or stop == num_data:
                    acc.update(torch.cat(held, dim=1) if len(held) > 1 else held[0])
                    write(acc, held_start, stop)
                    held, held_start = [], stop
    bounds = {g: out[f"iwae_{g}"] for g in group_sizes}
    bounds[num_samples] = out["log_px"]
    return MarginalLikelihood(
        log_px=out["log_px"],
        bounds=bounds,
        ess=out["ess"],
        pareto_k=_pareto_k(out["tail"]),  # tail: (M + 1, N), descending
        num_samples=num_samples,
        chunk_shape=(k_chunk, n_chunk),
    )


@dataclass
class _Probe:
    max_plate_nesting: int
    cell_bytes: int  # estimated bytes per (sample, datapoint) of one model+guide run


def default_memory_budget(device: torch.device | str) -> int:
    """The default ``max_memory_bytes`` of :func:`log_marginal_likelihood` on ``device``, bytes.

    On a CPU ``CPU_MEMORY_BYTES_PER_THREAD`` (64 MiB) times
    ``torch.get_num_threads()``; on a CUDA device ``CUDA_MEMORY_BYTES`` (4 GiB)
    or a quarter of the memory free on it, whichever is less, since a GPU
    needs large chunks to be busy.

    Example:
        >>> default_memory_budget("cpu") == 64 * 2**20 * torch.get_num_threads()
        True
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return min(CUDA_MEMORY_BYTES, free // 4)
    return CPU_MEMORY_BYTES_PER_THREAD * torch.get_num_threads()


def _check_arguments(model, guide, args, kwargs, num_samples, max_memory_bytes, validate,
                     plate_name) -> tuple[int, torch.device]:
    """Check the estimator's arguments and all of the data; return N and the data's device."""
    _check_options(num_samples, max_memory_bytes)
    num_data, device = _checked_data(args, kwargs)
    if validate:  # every observed value against its distribution's support, chunk by chunk
        with torch.no_grad(), poutine.block(), pyro.validation_enabled(False):
            for start in range(0, num_data, 1024):
                stop = min(start + 1024, num_data)
                chunk_args, chunk_kwargs = _slice_data(args, kwargs, num_data, start, stop)
                model_trace, _ = _traces(model, guide, chunk_args, chunk_kwargs, plate_name,
                                         torch.arange(start, stop, device=device))
                _refuse_outside_support(model_trace, start)
    return num_data, device


def _check_options(num_samples, max_memory_bytes) -> None:
    """Refuse a K that is not an integer >= 1 and a memory budget below 1 byte (None: the default)."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral) or num_samples < 1:
        raise ValueError(f"num_samples must be at least 1 and an integer, got {num_samples!r}.")
    if max_memory_bytes is not None and not max_memory_bytes >= 1:
        raise ValueError(f"max_memory_bytes must be a positive number of bytes, got {max_memory_bytes!r}.")


def _refuse_outside_support(model_trace, start: int, only_validated: bool = False) -> None:
    """Raise where an observed site's value is outside its distribution's support, naming the rows.

    ``start``: the global index of the trace's first row. ``only_validated``:
    check only distributions that validate their samples (``validate_args``
    not turned off for them), as their own ``log_prob`` would. Distributions
    without a ``support``, or with a dependent one, are not checked.
    """
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or not site["is_observed"]:
            continue
        if only_validated and not base_distribution(site["fn"])[0]._validate_args:
            continue
        try:
            support = site["fn"].support
        except NotImplementedError:  # a distribution without a support: nothing to check, as in torch
            continue
        if constraints.is_dependent(support):  # undecidable without the parameters, as in torch
            continue
        ok = support.check(site["value"])
        if not ok.all():
            rows = (~ok.reshape(len(ok) if ok.dim() else 1, -1)).any(1).nonzero().flatten()
            raise ValueError(
                f"observed site {name!r} holds values outside the support of its "
                f"{type(site['fn']).__name__} ({support}) in rows "
                f"{(rows[:10] + start).tolist()}; e.g. binarize grey levels for a Bernoulli likelihood.")


def _checked_data(args: tuple, kwargs: dict) -> tuple[int, torch.device]:
    """N and the data's device (:func:`_num_data`), refusing 0 rows and NaN or infinite values (rows named)."""
    num_data, device = _num_data(args, kwargs)
    if num_data == 0:
        raise ValueError("the data have 0 rows; pass at least one datapoint.")
    for name, value in [*((f"argument {i}", v) for i, v in enumerate(args)), *kwargs.items()]:
        if isinstance(value, torch.Tensor):
            check_finite(value, name)
    return num_data, device


def _num_data(args: tuple, kwargs: dict) -> tuple[int, torch.device]:
    """N, dim 0 of the first tensor argument, and that tensor's device."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0], value.device
    raise ValueError(
        "log_marginal_likelihood needs a tensor argument whose dim 0 runs over the datapoints."
    )


def _slice_data(args: tuple, kwargs: dict, num_data: int, start: int, stop: int):
    def cut(value):
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == num_data:
            return value[start:stop]
        return value

    return tuple(cut(a) for a in args), {name: cut(v) for name, v in kwargs.items()}


class _DataPlate(Messenger):
    """Gives the plate ``plate_name`` the global indices of the chunk's rows, and refuses a subsampled one.

    The estimator runs model and guide on slices of the data; a program that
    indexes per-datapoint parameters by the plate's indices
    (``with pyro.plate("data", len(x)) as idx: loc[idx]``) must see the rows'
    places in the whole data, not 0, 1, ... in every chunk.
    """

    def __init__(self, plate_name: str, indices: torch.Tensor):
        super().__init__()
        self.plate_name, self.indices = plate_name, indices

    def _pyro_sample(self, msg) -> None:
        if msg["name"] != self.plate_name or not isinstance(msg["fn"], _Subsample):
            return
        fn = msg["fn"]
        if fn.subsample_size is not None and fn.subsample_size != fn.size:
            raise ValueError(
                f"The plate {self.plate_name!r} is subsampled (subsample_size={fn.subsample_size} of "
                f"{fn.size}); log_marginal_likelihood needs every datapoint of its arguments in the plate: "
                f"build the plate without subsample_size or subsample (the estimator chunks the data itself)."
            )
        # (a value set already is the guide's, replayed into the model; a size other than the
        # chunk's is named by the probe's size check)
        if msg["value"] is None and fn.size == len(self.indices):
            msg["value"] = self.indices.to(fn.device)


def _traces(model, guide, args, kwargs, plate_name, indices):
    with _DataPlate(plate_name, indices):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return model_trace, guide_trace


def _sample_sites(trace):
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not site_is_subsample(site)
        and not site["infer"].get("_deterministic", False)
    }


def _data_frame(site, plate_name):
    for frame in site["cond_indep_stack"]:
        if frame.name == plate_name:
            return frame
    return None


def _probe(model, guide, args, kwargs, num_data, plate_name) -> _Probe:
    """Run model and guide once on a few datapoints, check their structure and measure it."""
    n = min(num_data, _PROBE_SIZE)
    probe_args, probe_kwargs = _slice_data(args, kwargs, num_data, 0, n)
    model_trace, guide_trace = _traces(model, guide, probe_args, probe_kwargs, plate_name, torch.arange(n))
    if pyro.infer.util.is_validation_enabled():  # the support checks log_prob would make, on the probe's rows
        _refuse_outside_support(model_trace, 0, only_validated=True)
    model_sites, guide_sites = _sample_sites(model_trace), _sample_sites(guide_trace)
    all_sites = [("model", s) for s in model_sites.values()] + [("guide", s) for s in guide_sites.values()]
    if not any(_data_frame(site, plate_name) for _, site in all_sites):
        raise ValueError(
            f"No plate named {plate_name!r} around the sample sites of model and guide; "
            "put the datapoints in a pyro.plate and pass its name as plate_name."
        )
    for program, site in all_sites:
        frame = _data_frame(site, plate_name)
        if frame is None:
            raise ValueError(
                f"Sample site {site['name']!r} of the {program} is outside the plate "
                f"{plate_name!r}; a per-datapoint estimate needs every sample site inside it "
                "(global latent variables have no per-datapoint weight)."
            )
        if frame.dim is None:
            raise ValueError(f"The plate {plate_name!r} must be vectorized (give it a dim).")
        if frame.full_size is not None and frame.full_size != frame.size:
            raise ValueError(f"The plate {plate_name!r} is subsampled ({frame.size} of {frame.full_size}); "
                             "log_marginal_likelihood needs every datapoint of its arguments in the plate: "
                             "build the plate without subsample_size or subsample.")
        if frame.size != n:
            raise ValueError(
                f"The plate {plate_name!r} at site {site['name']!r} has size {frame.size} on a "
                f"slice of {n} rows of the arguments; its size must equal dim 0 of the first "
                f"tensor argument ({num_data})."
            )
    latent = {name for name, site in model_sites.items() if not site["is_observed"]}
    missing = sorted(latent - set(guide_sites))
    if missing:
        raise ValueError(f"The guide does not sample the model's latent site(s) {missing}.")
    extra = sorted(set(guide_sites) - set(model_sites))
    if extra:
        raise ValueError(f"The guide samples site(s) {extra} that the model does not have.")
    nesting = [
        -frame.dim for _, site in all_sites for frame in site["cond_indep_stack"] if frame.vectorized
    ]
    nesting += [len(site["fn"].batch_shape) for _, site in all_sites]
    cell_bytes = 0
    for _, site in all_sites:
        fn = site["fn"]
        numel = math.prod(fn.batch_shape) * math.prod(fn.event_shape)
        itemsize = site["value"].element_size() if isinstance(site["value"], torch.Tensor) else 8
        cell_bytes += _WORKING_COPIES * numel * max(itemsize, 4) / n
    return _Probe(max_plate_nesting=max(nesting), cell_bytes=max(1, math.ceil(cell_bytes)))


def _chunk_shape(num_samples, num_data, cell_bytes, max_memory_bytes) -> tuple[int, int]:
    """(k_chunk, n_chunk) with k_chunk * n_chunk * cell_bytes <= max_memory_bytes (at least 1 x 1).

    Where the K samples need several chunks, they are split evenly
    (ceil(K / chunks) each) rather than into full chunks and a small rest,
    whose fixed cost per call of model and guide would be paid for few samples.
    """
    cells = max(1, int(max_memory_bytes // cell_bytes))
    if cells >= num_samples:
        return num_samples, max(1, min(num_data, cells // num_samples))
    return math.ceil(num_samples / math.ceil(num_samples / cells)), 1


def _log_weights(model, guide, args, kwargs, indices, num_particles, plate_name, max_plate_nesting):
    """log p(x_i, z_ki) - log q(z_ki | x_i) for z_ki ~ q: (num_particles, n); ``indices`` (n,) the rows' global places."""
    particle_dim = -(max_plate_nesting + 1)

    def vectorize(fn):
        def vectorized(*a, **kw):
            with pyro.plate("particles", num_particles, dim=particle_dim):
                return fn(*a, **kw)

        return vectorized

    model_trace, guide_trace = _traces(vectorize(model), vectorize(guide), args, kwargs, plate_name, indices)
    log_w = 0.0
    for sign, trace in ((1.0, model_trace), (-1.0, guide_trace)):
        trace.compute_log_prob()
        for site in _sample_sites(trace).values():
            log_w = log_w + sign * _per_datapoint(site, plate_name, max_plate_nesting)
    return log_w


def _per_datapoint(site, plate_name, max_plate_nesting):
    """A site's log-density summed over all dims but particles and data: (k or 1, n or 1).

    Masks (``poutine.mask``, ``obs_mask``) apply; scale factors (``poutine.scale``) do not: the
    estimate is of log p(x) of the unscaled programs.
    """
    log_p = scale_and_mask(site["unscaled_log_prob"], 1.0, site["mask"])
    width = max_plate_nesting + 1
    log_p = log_p.reshape((1,) * (width - log_p.dim()) + log_p.shape)
    data_dim = width + _data_frame(site, plate_name).dim
    other = [d for d in range(1, width) if d != data_dim]
    if other:
        log_p = log_p.sum(other, keepdim=True)
    return log_p.reshape(log_p.shape[0], log_p.shape[data_dim])


def _tail_size(num_samples: int) -> int:
    """M = ceil(min(K/5, 3 sqrt(K))), the tail fitted for Pareto-k-hat ([2], section 3)."""
    return int(math.ceil(min(0.2 * num_samples, 3.0 * math.sqrt(num_samples))))


class _StreamingWeights:
    """Running summaries of the log-weights of n datapoints, fed (k, n) blocks in sample order.

    Keeps, per datapoint and in float64: the running maximum m, sum exp(lw - m),
    sum exp(2 (lw - m)), the running sum of group logsumexps for every IWAE group
    size with the < g samples of an unfinished group, and the ``tail_size``
    largest log-weights.
    """

    def __init__(self, group_sizes: tuple[int, ...], tail_size: int):
        self.group_sizes = group_sizes
        self.tail_size = tail_size
        self.count = 0

    def _start(self, n, like):
        zeros = torch.zeros(n, dtype=torch.float64, device=like.device)
        self.max = torch.full_like(zeros, -math.inf)
        self.sum_w, self.sum_w2 = zeros.clone(), zeros.clone()
        self.carry = {g: like.new_empty((0, n), dtype=torch.float64) for g in self.group_sizes}
        self.group_sum = {g: zeros.clone() for g in self.group_sizes}
        self.tail = like.new_empty((0, n), dtype=torch.float64)

    def update(self, log_w: torch.Tensor) -> None:
        log_w = log_w.to(torch.float64)  # (k, n)
        if self.count == 0:
            self._start(log_w.shape[1], log_w)
        new_max = torch.maximum(self.max, log_w.max(0).values)  # (n,)
        shift = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
        rescale = torch.exp(self.max - shift)  # (n,), 0 while nothing finite was seen
        w = torch.exp(log_w - shift)  # (k, n)
        self.sum_w = self.sum_w * rescale + w.sum(0)
        self.sum_w2 = self.sum_w2 * rescale**2 + (w * w).sum(0)
        self.max = new_max
        self.count += log_w.shape[0]
        for g in self.group_sizes:
            pending = torch.cat([self.carry[g], log_w])  # (c + k, n)
            whole = pending.shape[0] // g * g
            groups = pending[:whole].reshape(-1, g, pending.shape[1])  # (groups, g, n)
            self.group_sum[g] += torch.logsumexp(groups, dim=1).sum(0)
            self.carry[g] = pending[whole:]
        both = torch.cat([self.tail, log_w])
        self.tail = both.topk(min(self.tail_size, both.shape[0]), dim=0).values  # descending

    def finish(self) -> dict[str, torch.Tensor]:
        """``log_px``, ``ess``, ``iwae_<g>`` for each group size g: (n,); ``tail``: (<= tail_size, n)."""
        out = {"log_px": self.max + torch.log(self.sum_w) - math.log(self.count)}
        out["ess"] = self.sum_w**2 / self.sum_w2
        for g in self.group_sizes:
            out[f"iwae_{g}"] = self.group_sum[g] / (self.count // g) - math.log(g)
        out["tail"] = self.tail
        return out


def _pareto_k(tail: torch.Tensor, columns_per_step: int = 1024) -> torch.Tensor:
    """Pareto-k-hat per column of the sorted (descending) largest log-weights (M + 1, N): (N,).

    Follows ``pyro.infer.importance.psis_diagnostic``: weights relative to the
    largest, cutoff at the (M+1)-th largest (at least 1e-15), and the fit of the
    exceedances by ``pyro.ops.stats.fit_generalized_pareto`` (Zhang & Stephens
    2009, as in [2], appendix). That function fits one sample at a time, about
    0.3 ms each, which made the fits of 10,000 datapoints outlast the whole
    K = 5000 estimate on a GPU; this is the same arithmetic for many columns at
    once (tested against it to 1e-10). NaN where fewer than 10 weights exceed
    the cutoff or one is not finite. Runs on the tail's device, float64.
    """
    tail = tail.to(torch.float64)
    out = torch.full((tail.shape[1],), math.nan, dtype=torch.float64, device=tail.device)
    if tail.shape[0] < _MIN_TAIL + 1:
        return out
    rel = tail - tail[0]  # (M + 1, N), <= 0, descending
    cutoff = torch.clamp(rel[-1], min=math.log(1e-15))  # (N,)
    above = rel[:-1] > cutoff  # (M, N): a prefix of each column
    count = above.sum(0)  # (N,) exceedances
    finite = torch.where(above, torch.isfinite(rel[:-1]), True).all(0)
    columns = torch.nonzero((count >= _MIN_TAIL) & finite).squeeze(-1)
    for step in columns.split(columns_per_step) if len(columns) else ():  # split() of nothing is (nothing,)
        x = torch.where(above[:, step], rel[:-1, step].exp() - cutoff[step].exp(), 0.0)  # (M, C) descending
        out[step] = _fit_pareto_k(x, above[:, step], count[step])
    return out


def _fit_pareto_k(x: torch.Tensor, valid: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """``pyro.ops.stats.fit_generalized_pareto(x[:n_c, c])[0]`` for every column c at once.

    Args:
        x: (M, C) exceedances, each column descending over its first n_c rows, 0 below.
        valid: (M, C) True on the first n_c rows of column c.
        n: (C,) n_c >= 1, the exceedances per column.
    """
    n_float = n.to(x.dtype)  # (C,)
    grid = 30 + n_float.sqrt().floor()  # (C,) Zhang & Stephens' M = 30 + int(sqrt(N)) grid points
    j = torch.arange(1, int(grid.max()) + 1, dtype=x.dtype, device=x.device).unsqueeze(-1)  # (G, 1)
    on_grid = j <= grid  # (G, C)
    quartile = x.gather(0, (n - 1 - (n_float / 4 - 0.5).floor().long()).unsqueeze(0))  # (1, C): X[int(N/4 - 0.5)]
    bs = (1.0 - grid.sqrt() / (j - 0.5).sqrt()) / (3.0 * quartile) + 1.0 / x[:1]  # (G, C); x[0] is the max
    terms = torch.log1p(-bs.unsqueeze(1) * x)  # (G, M, C)
    ks = torch.where(valid, terms, 0.0).sum(1) / n_float  # (G, C)
    ls = n_float * (torch.log(-bs / ks) - (ks + 1.0))  # (G, C)
    ls = torch.where(on_grid, ls, -math.inf)
    ratios = torch.exp(ls.unsqueeze(0) - ls.unsqueeze(1))  # (G, G, C): [g, l] = exp(L_l - L_g)
    weights = 1.0 / torch.where(on_grid.unsqueeze(0), ratios, 0.0).sum(1)  # (G, C)
    weights = torch.where(on_grid & (weights > 1.0e-30), weights, 0.0)
    total = weights.sum(0)  # (C,)
    b = torch.where(total > 0, (bs * weights).sum(0) / total, 0.0)  # (C,)
    k = torch.where(valid, torch.log1p(-b * x), 0.0).sum(0) / n_float
    return k * n_float / (n_float + 10.0) + 5.0 / (n_float + 10.0)
