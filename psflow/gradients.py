"""Reverse-mode automatic differentiation: `gradients(ys, xs)` adds gradient nodes to the graph.

Each op class registers its gradient function next to its forward (`@register_gradient(Op)`).
A gradient function takes the op and the gradient flowing into its output (a node) and returns
one gradient node (or None) per input.
"""

import numpy as np

from .errors import GraphMismatchError, NoGradientError
from .graph import Node, topological_order

_GRADIENTS = {}


def register_gradient(op_class):
    """Decorator: registers the decorated function as the gradient of `op_class`."""
    def decorate(fn):
        _GRADIENTS[op_class] = fn
        return fn
    return decorate


class IndexedSlices:
    """A sparse gradient: `values[i]` is the gradient of row `indices[i]` of a tensor of
    `dense_shape` (rows may repeat; they add up). Gradients of `gather` have this form, so an
    embedding update touches only the looked-up rows."""

    __slots__ = ("values", "indices", "dense_shape")

    def __init__(self, values, indices, dense_shape):
        self.values = values
        self.indices = indices
        self.dense_shape = tuple(dense_shape)

    def to_dense(self):
        dense = np.zeros(self.dense_shape, dtype=self.values.dtype)
        np.add.at(dense, self.indices, self.values)
        return dense

    def __repr__(self):
        return f"IndexedSlices(rows={len(self.indices)}, dense_shape={self.dense_shape})"


def gradients(ys, xs, grad_ys=None, name="gradients"):
    """Symbolic derivatives of `sum(ys)` with respect to each of `xs`.

    Returns a list with one node per x (None where x does not affect ys). Gradients that reach
    a node along several paths are added. Raises NoGradientError naming the op when the path
    goes through an op without a registered gradient.
    """
    from . import math_ops  # the aggregation and seed ops; imported late to avoid a cycle

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
        for y, grad_y in zip(ys, grad_ys):
            if y not in depends_on_x:
                continue
            seed = math_ops.ones_like(y) if grad_y is None else grad_y
            pending.setdefault(y, []).append(seed)

        for node in reversed(order):
            if node not in pending or not node.inputs:
                continue
            if not any(inp in depends_on_x for inp in node.inputs):
                continue
            grad_fn = _GRADIENTS.get(type(node))
            if grad_fn is None:
                raise NoGradientError(
                    f"no gradient is defined for op {node.name!r} (type {type(node).__name__}); "
                    "it lies on the path from the loss to the variables")
            grad = _aggregate(pending[node], dense=True)
            input_grads = grad_fn(node, grad)
            for inp, input_grad in zip(node.inputs, input_grads):
                if input_grad is not None and inp in depends_on_x:
                    pending.setdefault(inp, []).append(input_grad)

        return [_aggregate(pending[x], dense=False) if x in pending else None for x in xs]


def _aggregate(grads, dense):
    """Sums the gradients that reached one node. Sparse (IndexedSlices) gradients stay sparse
    only when all are sparse and the consumer accepts that (`dense=False`: a variable)."""
    from . import math_ops
    if all(g.is_sparse for g in grads) and not dense:
        return grads[0] if len(grads) == 1 else math_ops.ConcatSlices(grads)
    grads = [math_ops.ToDense(g) if g.is_sparse else g for g in grads]
    return grads[0] if len(grads) == 1 else math_ops.add_n(grads)
