"""Compiled chunks of the importance-sampling estimator, kept for the life of the process.

``log_marginal_likelihood(..., compile=True)`` scores every chunk of K samples
by one compiled graph instead of a run of the Pyro program: no tracing, no
handlers, and Inductor (``torch.compile``'s compiler, called on the recorded
graph directly) fuses the elementwise work around the networks' matrix
products. Three pieces make that pay on short runs as well
as long ones:

* **A program signature, cheap enough for every call.** One run of the
  log-weights on one datapoint and one sample, under a
  ``TorchDispatchMode``, lists the operators it calls and the tensors it
  reads from outside: parameters and buffers by identity, ``torch.tensor``
  literals (made afresh at every run) by value. Any change of the program, a swapped
  network, a new parameter or another branch taken, changes the signature.
* **A cache of compiled graphs keyed by that signature** (and the chunk's
  shapes and, on a CPU, torch's thread count, which Inductor writes into the
  graph's loops), shared by all calls in the process: the first call records the
  chunk with ``make_fx`` and compiles it; later calls with the same program
  reuse it. The graph holds the parameters themselves, not copies, so
  weights trained in place between calls are read at run time.
* **The chunk size is measured, not assumed.** Where the caller gives no
  memory budget, a few chunk shapes (on a CPU a quarter, a sixteenth and a
  64th of the default budget; on a GPU the default budget's, a quarter and a
  sixteenth of it) are each compiled and timed on the first datapoints, and
  the fastest per (sample, datapoint) is kept for the program, the sizes and
  the torch thread count. On a CPU a compiled chunk has little fixed cost, so
  a chunk whose working set stays in the caches, and whose tensors the
  allocator reuses instead of taking fresh pages from the system, can beat a
  larger one; which size wins depends on the machine and the networks, so it
  is measured.
* **Unfusable transcendentals keep ATen's kernel where it is faster (CPU)**:
  an MLP's ``tanh`` between matrix products runs by ATen's vector math or by
  Inductor's loop, whichever is faster on this machine for its shape (timed
  once per process, :mod:`pplvae.inductor_passes`).

The trials and the recordings run under a forked torch RNG: the estimate's
draws are the ones an uncompiled run with the same chunk shape takes.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from typing import Callable

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from pplvae.inductor_passes import UnfusableTranscendentals, faster_in_aten
from pplvae.timing import fastest

__all__ = ["CompiledLogWeights", "clear_cache", "cpu_threads", "program_signature"]

CACHE_SIZE = 16
"""Compiled graphs and chunk choices kept per process (least recently used dropped first)."""

_LIFT_FRESH = (torch.ops.aten.lift_fresh.default, torch.ops.aten.lift_fresh_copy.default)
_cache: "OrderedDict[tuple, object]" = OrderedDict()


def clear_cache() -> None:
    """Drop every compiled chunk graph and chunk-size choice of this process."""
    _cache.clear()


def _cached(key: tuple, make: Callable[[], object]) -> object:
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    value = _cache[key] = make()
    while len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)
    return value


class _Signature:
    """A program's operator list, hashed once (chunk calls look it up hundreds of times).

    It holds the tensors it names by identity, so that no other tensor can take
    their ids while a cache key made from it lives.
    """

    def __init__(self, ops: tuple, outside: list[torch.Tensor]):
        self.ops, self.outside, self._hash = ops, outside, hash(ops)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        return isinstance(other, _Signature) and self._hash == other._hash and self.ops == other.ops


class _SignatureMode(TorchDispatchMode):
    """Records each dispatched operator with its non-tensor arguments and where its tensor arguments come from."""

    def __init__(self, inputs: list[torch.Tensor]):
        super().__init__()
        self.inputs = {id(t): i for i, t in enumerate(inputs)}
        self.made: dict[int, tuple[int, torch.Tensor]] = {}  # id -> (operator's place, tensor kept alive)
        self.outside: list[torch.Tensor] = []
        self.ops: list[tuple] = []

    def _source(self, t: torch.Tensor, fresh: bool):
        if id(t) in self.made:
            return ("made", self.made[id(t)][0])
        if id(t) in self.inputs:
            return ("input", self.inputs[id(t)])
        self.outside.append(t)
        meta = (tuple(t.shape), t.dtype, str(t.device))
        if fresh:  # a torch.tensor(...) literal of the program, made anew at every run
            return ("value", meta, tuple(t.detach().cpu().flatten().tolist()))
        return ("tensor", meta, id(t))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        entry = [str(func)]
        fresh = func in _LIFT_FRESH
        for leaf in pytree.tree_leaves((args, kwargs)):
            entry.append(self._source(leaf, fresh) if isinstance(leaf, torch.Tensor) else _hashable(leaf))
        out = func(*args, **kwargs)
        for leaf in pytree.tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.made[id(leaf)] = (len(self.ops), leaf)
        self.ops.append(tuple(entry))
        return out


def cpu_threads(tensors: list[torch.Tensor]) -> int | None:
    """torch's thread count where a tensor is on a CPU, else None: Inductor writes it into a CPU graph's loops.

    A graph compiled on one thread runs its fused loops on one thread whatever
    the count later (a 5000 x 784 elementwise reduction compiled on one thread
    took 7.7 ms on two, against 3.6 ms compiled on two), so the count is part
    of a compiled graph's key: here and in :class:`pplvae.training.CompiledLoss`.

    Args:
        tensors: a compiled graph's tensor inputs, any shapes.

    Returns:
        ``torch.get_num_threads()`` if any of them is on a CPU, else None.
    """
    return torch.get_num_threads() if any(t.device.type == "cpu" for t in tensors) else None


def _hashable(value):
    try:
        hash(value)
    except TypeError:
        return ("repr", type(value).__name__, repr(value))
    return value


def program_signature(log_weights: Callable, args: tuple, kwargs: dict, indices: torch.Tensor) -> _Signature:
    """A hashable description of the program ``log_weights(args, kwargs, indices, 1)`` runs.

    Args:
        log_weights: ``f(args, kwargs, indices, num_particles) -> (num_particles, n)``.
        args, kwargs: the arguments of one datapoint (n = 1 row of each data tensor).
        indices: (1,) the datapoint's index.

    Returns:
        A hashable value, equal for runs of the same program: the operators
        called, their non-tensor arguments, and for each tensor
        argument: made in the run, one of the inputs, or read from outside
        (by identity; ``torch.tensor`` literals by value). Runs under a
        forked torch RNG.
    """
    inputs = [t for t in pytree.tree_leaves((args, kwargs, indices)) if isinstance(t, torch.Tensor)]
    devices = [t.device for t in inputs if t.device.type == "cuda"][:1]
    mode = _SignatureMode(inputs)
    with torch.random.fork_rng(devices=devices), mode:
        log_weights(args, kwargs, indices, 1)
    return _Signature(tuple(mode.ops), mode.outside)


class CompiledLogWeights:
    """``log_weights(args, kwargs, indices, k)`` run as a compiled graph, from the process-wide cache.

    Args:
        log_weights: ``f(args, kwargs, indices, num_particles) -> (num_particles, n)`` log-weights.
        signature: :func:`program_signature` of ``log_weights`` for the current call.
        options: Inductor options, as ``torch.compile``'s (``fallback_random`` is always on:
            draws come from torch's generator, as in the uncompiled run). By default the
            ``post_grad_custom_pre_pass`` is :class:`pplvae.inductor_passes.UnfusableTranscendentals`
            for the transcendentals of the recorded graph that :func:`pplvae.inductor_passes.faster_in_aten`
            finds faster by ATen's kernel.

    Calling it with a chunk's arguments records the chunk with ``make_fx``
    (real tensors; Python control flow is fixed at the recorded chunk) and
    compiles it the first time its signature and shapes are seen in the
    process; afterwards the compiled graph runs directly.
    """

    def __init__(self, log_weights: Callable, signature: tuple, options: dict | None = None):
        self.log_weights = log_weights
        # the cache's own object where it holds an equal signature: a chunk's lookups then match it by
        # identity instead of comparing the operator lists (about 12 us each, three lookups per chunk)
        self.signature = next((key[1] for key in _cache if key[1] == signature), signature)
        self.options = {**(options or {}), "fallback_random": True}

    def __call__(self, args: tuple, kwargs: dict, indices: torch.Tensor, num_particles: int) -> torch.Tensor:
        args = (*args, indices)  # the chunk's global indices are an input of the graph, not a constant
        names = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        names += [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
        tensors = [args[n] if isinstance(n, int) else kwargs[n] for n in names]
        key = ("graph", self.signature, num_particles, tuple((t.shape, t.dtype, t.device) for t in tensors),
               cpu_threads(tensors))

        def compile_graph():
            from torch.fx.experimental.proxy_tensor import make_fx

            def run(*tensors):
                new = dict(zip(names, tensors))
                *a, rows = tuple(new.get(i, value) for i, value in enumerate(args))
                return self.log_weights(tuple(a), {k: new.get(k, v) for k, v in kwargs.items()}, rows, num_particles)

            devices = [t.device for t in tensors if t.device.type == "cuda"][:1]
            with torch.random.fork_rng(devices=devices):  # recording runs the program: keep its draws out
                graph = make_fx(run, tracing_mode="real")(*tensors)
                options = {"post_grad_custom_pre_pass": UnfusableTranscendentals(faster_in_aten(graph.graph)),
                           **self.options}
                # Inductor on the recorded graph itself, not through TorchDynamo: the graph is already
                # captured, and Dynamo's guards on the graph's parameters would be checked at every chunk
                return torch._inductor.compile(graph, list(tensors), options=options)

        return _cached(key, compile_graph)(*tensors)

    def fastest_chunk_shape(self, shapes: list[tuple[int, int]], num_samples: int, data_chunk: Callable,
                            device: torch.device) -> tuple[int, int]:
        """The chunk shape (k, n) of ``shapes`` that scores K samples of the first datapoints fastest.

        Args:
            shapes: candidate (samples, datapoints) per chunk.
            num_samples: K.
            data_chunk: ``data_chunk(n) -> (args, kwargs, indices)`` of the first n datapoints.
            device: where the program runs (CUDA is synchronized around the timings).

        Returns:
            The candidate with the least time per (sample, datapoint) pair, best
            of three timed runs of K samples each after a first run that
            compiles; the runs of the candidates alternate, so that a burst of
            load on a shared machine does not fall on one candidate alone.
            Remembered for this program, these candidates and the torch thread
            count. The trials' draws are discarded (forked RNG).
        """
        if len(shapes) == 1:
            return shapes[0]
        key = ("chunk", self.signature, tuple(shapes), num_samples, torch.get_num_threads(), str(device))

        def measure():
            runs, work = {}, {}
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                for k, n in shapes:
                    args, kwargs, indices = data_chunk(n)
                    self(args, kwargs, indices, k)  # compiles
                    calls = math.ceil(num_samples / k)
                    runs[(k, n)] = functools.partial(self._repeat, args, kwargs, indices, k, calls)
                    work[(k, n)] = calls * k * n
                return fastest(runs, rounds=3, work=work, device=device)

        return _cached(key, measure)

    def _repeat(self, args: tuple, kwargs: dict, indices: torch.Tensor, num_particles: int, calls: int) -> None:
        for _ in range(calls):
            self(args, kwargs, indices, num_particles)
