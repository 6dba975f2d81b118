"""A graph pass for ``torch.compile`` on a CPU: unfusable transcendentals keep ATen's kernel where it is faster.

Inductor earns its speed by fusing elementwise work into few loops. A
``tanh`` (``exp``, ``sigmoid``, ...) between two matrix products, as in an
MLP, has nothing to fuse with: its input comes from an extern matrix-product
kernel and its readers are matrix products. There Inductor's generated loop
and ATen's own kernel do the same work by different vector math, and which
is faster depends on the CPU and the math library. On one thread of a
2-core Intel Xeon, the ``tanh`` of a 784-200-200-50 decoder took 0.7 ms per
image of a K = 5000 estimate by ATen's kernel (MKL's vector math) against
3.9 ms by Inductor's loop; on a 2-core AMD EPYC, ATen's was the slower
(0.64 against 0.54 ms per 1000 x 200 call). So each such operator is timed
both ways on this machine, once per process for its shape, dtype and torch
thread count (:func:`faster_in_aten`), and :class:`UnfusableTranscendentals`
puts the ones where ATen's kernel wins behind a custom operator, which
Inductor calls instead of generating code; everything else, and every graph
on a GPU, compiles as usual.

Used by :func:`pplvae.log_marginal_likelihood` with ``compile=True``, through
``torch.compile``'s ``post_grad_custom_pre_pass`` option, where every such
tensor has thousands of rows (K samples). Not used by ``TrainConfig(compile=True)``:
at batch 20 the custom operator's fixed cost per call outweighs the gain (on
the Xeon a compiled 784-200-200-50 VAE step is 8% slower with the pass,
3% faster at batch 128).
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

from pplvae.timing import fastest

__all__ = ["UnfusableTranscendentals", "faster_in_aten", "keep_unfusable_transcendentals", "unfusable_transcendentals"]

aten = torch.ops.aten

_TRANSCENDENTAL = {
    aten.tanh.default, aten.exp.default, aten.log.default, aten.sigmoid.default, aten.log1p.default,
    aten.expm1.default, aten.erf.default, aten.sin.default, aten.cos.default,
}
_MATRIX_PRODUCTS = {
    aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default, aten.convolution.default,
}
_timed: dict[tuple, bool] = {}  # (operator, shape, dtype, torch threads) -> ATen's kernel is the faster


@torch.library.custom_op("pplvae::aten_pointwise", mutates_args=())
def _aten_pointwise(x: torch.Tensor, op: str) -> torch.Tensor:
    """``aten.<op>(x)`` by ATen's own kernel: a custom operator, which Inductor calls instead of generating code."""
    return getattr(aten, op).default(x)


@_aten_pointwise.register_fake
def _(x: torch.Tensor, op: str) -> torch.Tensor:
    return torch.empty_like(x)


def _through_views(node: torch.fx.Node, up: bool) -> list[torch.fx.Node]:
    """The nodes ``node`` reads (``up``) or that read it, looking through views."""
    found = []
    for other in (node.all_input_nodes if up else node.users):
        if isinstance(other.target, torch._ops.OpOverload) and other.target.is_view:
            found += _through_views(other, up)
        else:
            found.append(other)
    return found


def _on_cpu(node: torch.fx.Node) -> bool:
    device = getattr(node.meta.get("val"), "device", None)
    return device is not None and device.type == "cpu"


def _describe(node: torch.fx.Node) -> tuple[str, tuple[int, ...], str]:
    """(operator name, shape, dtype) of a node's value: what the timings of :func:`faster_in_aten` are kept by."""
    value = node.meta["val"]
    return node.target._opname, tuple(int(s) for s in value.shape), str(value.dtype).removeprefix("torch.")


def unfusable_transcendentals(graph: torch.fx.Graph) -> list[torch.fx.Node]:
    """The CPU transcendentals of ``graph`` found between matrix products: Inductor has nothing to fuse them with.

    A node qualifies when its operator is one of ``tanh``, ``exp``, ``log``,
    ``sigmoid``, ``log1p``, ``expm1``, ``erf``, ``sin``, ``cos``, its input is a
    matrix product's output (``mm``, ``addmm``, ``bmm``, ``baddbmm``,
    ``convolution``), every reader is a matrix product (views in between are
    looked through), and its value (the node's ``meta["val"]``) is on a CPU.

    Args:
        graph: an ATen-level ``torch.fx.Graph`` (``make_fx``'s, or Inductor's
            after autograd).
    """
    found = []
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in _TRANSCENDENTAL or not _on_cpu(node):
            continue
        producers, readers = _through_views(node, up=True), _through_views(node, up=False)
        if (len(producers) == 1 and producers[0].target in _MATRIX_PRODUCTS and readers
                and all(r.target in _MATRIX_PRODUCTS for r in readers)):
            found.append(node)
    return found


def keep_unfusable_transcendentals(graph: torch.fx.Graph, only: Optional[Iterable[tuple]] = None) -> int:
    """Run the nodes of :func:`unfusable_transcendentals` as ATen calls; returns how many.

    The graph is changed in place.

    Args:
        graph: an ATen-level ``torch.fx.Graph`` (``make_fx``'s, or Inductor's
            after autograd).
        only: if given, just the nodes whose (operator name, shape, dtype),
            e.g. ``("tanh", (1000, 200), "float32")``, is among these, as
            :func:`faster_in_aten` returns them.
    """
    only = None if only is None else set(only)
    changed = 0
    for node in unfusable_transcendentals(graph):
        if only is None or _describe(node) in only:
            node.target, node.args = torch.ops.pplvae.aten_pointwise.default, (node.args[0], node.target._opname)
            changed += 1
    return changed


def faster_in_aten(graph: torch.fx.Graph, rounds: int = 5) -> frozenset[tuple[str, tuple[int, ...], str]]:
    """Which of the graph's :func:`unfusable_transcendentals` run faster by ATen's kernel than by Inductor's loop.

    Each distinct (operator, shape, dtype) is timed on this machine with
    torch's current thread count, once per process: ATen's kernel, called as
    the pass calls it, against Inductor's loop for the operator alone
    (compiled here: a second or two for the first in a process, then about
    0.1 s from Inductor's cache on disk), on absolute values of standard
    normal draws from a generator of its own (the caller's random stream is
    untouched), ``rounds`` alternating rounds of four calls each, the best
    round of each side.

    Args:
        graph: an ATen-level ``torch.fx.Graph`` whose nodes carry
            ``meta["val"]`` (``make_fx``'s).
        rounds: alternating timing rounds per operator.

    Returns:
        The (operator name, shape, dtype) of the nodes where ATen's kernel was
        the faster: ``only`` for :func:`keep_unfusable_transcendentals` and
        :class:`UnfusableTranscendentals`. Empty where no node qualifies (then
        nothing is timed).
    """
    faster = set()
    for name, shape, dtype in {_describe(node) for node in unfusable_transcendentals(graph)}:
        key = (name, shape, dtype, torch.get_num_threads())
        if key not in _timed:
            _timed[key] = _aten_wins(name, shape, getattr(torch, dtype), rounds)
        if _timed[key]:
            faster.add((name, shape, dtype))
    return frozenset(faster)


def _aten_wins(name: str, shape: tuple[int, ...], dtype: torch.dtype, rounds: int) -> bool:
    from torch.fx.experimental.proxy_tensor import make_fx

    x = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(0)).abs_()
    with torch.no_grad():
        inductor = torch._inductor.compile(make_fx(getattr(aten, name).default)(x), [x])
        calls = {"aten": lambda: torch.ops.pplvae.aten_pointwise(x, name), "inductor": lambda: inductor(x)}
        for call in calls.values():
            call()  # warm up
        return fastest({side: lambda call=call: [call() for _ in range(4)] for side, call in calls.items()},
                       rounds=rounds) == "aten"


class UnfusableTranscendentals(CustomGraphPass):
    """:func:`keep_unfusable_transcendentals` as ``torch.compile(..., options={"post_grad_custom_pre_pass": ...})``.

    Args:
        only: as :func:`keep_unfusable_transcendentals`'s (typically
            :func:`faster_in_aten` of the graph to compile); None: every node
            that qualifies.

    Example:
        >>> f = torch.compile(torch.nn.Linear(3, 3), options={"post_grad_custom_pre_pass": UnfusableTranscendentals()})
    """

    def __init__(self, only: Optional[Iterable[tuple]] = None):
        self.only = None if only is None else frozenset(only)

    def __call__(self, graph: torch.fx.Graph) -> None:
        keep_unfusable_transcendentals(graph, self.only)

    def uuid(self) -> bytes:  # Inductor's cache of compiled graphs tells the passes apart by it
        chosen = "all" if self.only is None else repr(sorted(self.only))
        return get_hash_for_files((__file__,)) + chosen.encode()
