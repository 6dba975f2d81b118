"""A graph pass for ``torch.compile`` on a CPU: transcendentals that Inductor cannot fuse keep ATen's kernel.

Inductor earns its speed by fusing elementwise work into few loops. A
``tanh`` (``exp``, ``sigmoid``, ...) between two matrix products, as in an
MLP, has nothing to fuse with: its input comes from an extern matrix-product
kernel and its readers are matrix products. There Inductor's generated loop is slower than ATen's own
kernel, which calls the vendor's vector math (MKL on x86): ``tanh`` of the
2 x 5000 x 200 hidden units of a 784-200-200-50 decoder, per image of a
K = 5000 estimate, took 3.9 ms compiled against 0.7 ms for ATen's kernel on
a 2-core Xeon. :class:`UnfusableTranscendentals` puts such nodes behind a
custom operator, which Inductor calls instead of generating code; everything
else, and every graph on a GPU, compiles as usual.

Used by :func:`pplvae.log_marginal_likelihood` with ``compile=True``, through
``torch.compile``'s ``post_grad_custom_pre_pass`` option, where every such
tensor has thousands of rows (K samples). Not used by ``TrainConfig(compile=True)``:
at batch 20 the custom operator's fixed cost per call outweighs the gain (on
the same Xeon a compiled 784-200-200-50 VAE step is 8% slower with the pass,
3% faster at batch 128).
"""

from __future__ import annotations

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

__all__ = ["UnfusableTranscendentals", "keep_unfusable_transcendentals"]

aten = torch.ops.aten

_TRANSCENDENTAL = {
    aten.tanh.default, aten.exp.default, aten.log.default, aten.sigmoid.default, aten.log1p.default,
    aten.expm1.default, aten.erf.default, aten.sin.default, aten.cos.default,
}
_MATRIX_PRODUCTS = {
    aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default, aten.convolution.default,
}


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


def keep_unfusable_transcendentals(graph: torch.fx.Graph) -> int:
    """Run the CPU transcendentals found between matrix products as ATen calls; returns how many.

    A node qualifies when its operator is one of ``tanh``, ``exp``, ``log``,
    ``sigmoid``, ``log1p``, ``expm1``, ``erf``, ``sin``, ``cos``, its input is a
    matrix product's output (``mm``, ``addmm``, ``bmm``, ``baddbmm``,
    ``convolution``), every reader is a matrix product (views in between are
    looked through), and its value (the node's ``meta["val"]``) is on a CPU:
    Inductor has nothing to fuse it with. The graph is changed in place.

    Args:
        graph: an ATen-level ``torch.fx.Graph`` (``make_fx``'s, or Inductor's
            after autograd).
    """
    changed = 0
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in _TRANSCENDENTAL or not _on_cpu(node):
            continue
        producers, readers = _through_views(node, up=True), _through_views(node, up=False)
        if (len(producers) == 1 and producers[0].target in _MATRIX_PRODUCTS and readers
                and all(r.target in _MATRIX_PRODUCTS for r in readers)):
            node.target, node.args = torch.ops.pplvae.aten_pointwise.default, (node.args[0], node.target._opname)
            changed += 1
    return changed


class UnfusableTranscendentals(CustomGraphPass):
    """:func:`keep_unfusable_transcendentals` as ``torch.compile(..., options={"post_grad_custom_pre_pass": ...})``.

    Example:
        >>> f = torch.compile(torch.nn.Linear(3, 3), options={"post_grad_custom_pre_pass": UnfusableTranscendentals()})
    """

    def __call__(self, graph: torch.fx.Graph) -> None:
        keep_unfusable_transcendentals(graph)

    def uuid(self) -> bytes:
        return get_hash_for_files((__file__,))
