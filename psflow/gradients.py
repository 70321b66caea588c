"""Reverse-mode automatic differentiation: `gradients(ys, xs)` adds gradient nodes to the graph.

It sits above the ops: each op module registers its ops' gradients next to their forwards
(psflow.gradient_registry), and this module walks the graph backwards calling them.
"""

import numpy as np

from .errors import GraphMismatchError
from .gradient_registry import gradient_function
from .graph import Node, topological_order
from .indexed_slices import IndexedSlices
from .math_ops import add_n, ones_like


def gradients(ys, xs, grad_ys=None, name="gradients"):
    """Symbolic derivatives of `sum(ys)` with respect to each of `xs`.

    Returns a list with one node per x (None where x does not affect ys). Gradients that reach
    a node along several paths are added. Raises NoGradientError naming the op when the path
    goes through an op without a registered gradient.
    """
    ys = list(ys) if isinstance(ys, (list, tuple)) else [ys]
    xs = list(xs) if isinstance(xs, (list, tuple)) else [xs]
    for node in ys + xs:
        if not isinstance(node, Node):
            raise TypeError(f"gradients() takes graph nodes, got {node!r}")
        if node.graph is not ys[0].graph:
            raise GraphMismatchError(
                f"gradients(): {node.name!r} and {ys[0].name!r} belong to different graphs")
    if grad_ys is None:
        grad_ys = [None] * len(ys)
    elif not isinstance(grad_ys, (list, tuple)):
        grad_ys = [grad_ys]

    order = topological_order(ys)
    # Only nodes on a path from some x need a gradient.
    wanted = set(xs)
    depends_on_x = set()
    for node in order:
        if node in wanted or any(inp in depends_on_x for inp in node.inputs):
            depends_on_x.add(node)

    graph = ys[0].graph
    pending = {}
    with graph.name_scope(name):
        for y, grad_y in zip(ys, grad_ys, strict=False):
            if y not in depends_on_x:
                continue
            seed = ones_like(y) if grad_y is None else grad_y
            pending.setdefault(y, []).append(seed)

        for node in reversed(order):
            if node not in pending or not node.inputs:
                continue
            if not any(inp in depends_on_x for inp in node.inputs):
                continue
            grad_fn = gradient_function(node)
            grad = _aggregate(pending[node], dense=True)
            input_grads = grad_fn(node, grad)
            for inp, input_grad in zip(node.inputs, input_grads, strict=False):
                if input_grad is not None and inp in depends_on_x:
                    pending.setdefault(inp, []).append(input_grad)

        return [_aggregate(pending[x], dense=False) if x in pending else None for x in xs]


def _aggregate(grads, dense):
    """Sums the gradients that reached one node. Sparse (IndexedSlices) gradients stay sparse
    only when all are sparse and the consumer accepts that (`dense=False`: a variable)."""
    if all(g.is_sparse for g in grads) and not dense:
        return grads[0] if len(grads) == 1 else ConcatSlices(grads)
    grads = [ToDense(g) if g.is_sparse else g for g in grads]
    return grads[0] if len(grads) == 1 else add_n(grads)


class ToDense(Node):
    """Turns a sparse (IndexedSlices) gradient into a dense array."""

    def __init__(self, slices):
        super().__init__((slices,), shape=slices.shape, dtype=slices.dtype)

    def forward(self, slices):
        return slices.to_dense()


class ConcatSlices(Node):
    """Adds sparse gradients by concatenating their rows."""

    is_sparse = True

    def __init__(self, slices):
        super().__init__(slices, shape=slices[0].shape, dtype=slices[0].dtype)

    def forward(self, *slices):
        return IndexedSlices(np.concatenate([s.values for s in slices]),
                             np.concatenate([s.indices for s in slices]),
                             slices[0].dense_shape)
