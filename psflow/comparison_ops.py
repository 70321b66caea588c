"""Comparisons and logical ops (boolean results, no gradient) and `where`, which selects by a
condition (its gradient flows to the selected operand)."""

import numpy as np

from .elementwise import NumpyFn, binary_op_class, binary_operands, sum_to_shape_of, unary_op_class
from .gradient_registry import register_gradient
from .graph import Node, convert_to_tensor
from .shapes import broadcast_static


class Equal(Node):
    """Elementwise `a == b` as booleans (no gradient)."""

    def __init__(self, a, b, name=None):
        a, b = binary_operands(a, b)
        super().__init__((a, b), name=name, shape=broadcast_static(a.shape, b.shape),
                         dtype=np.dtype(np.bool_))

    def forward(self, a, b):
        return np.equal(a, b)


LogicalNot = unary_op_class("LogicalNot", np.logical_not, dtype=np.bool_)
_COMPARISONS = {"Less": np.less, "LessEqual": np.less_equal, "Greater": np.greater,
                "GreaterEqual": np.greater_equal, "NotEqual": np.not_equal,
                "LogicalAnd": np.logical_and, "LogicalOr": np.logical_or,
                "LogicalXor": np.logical_xor}
_COMPARE = {name: binary_op_class(name, fn, dtype=np.bool_) for name, fn in _COMPARISONS.items()}


def equal(a, b, name=None):
    return Equal(a, b, name=name)


def less(x, y, name=None):
    return _COMPARE["Less"](x, y, name=name)


def less_equal(x, y, name=None):
    return _COMPARE["LessEqual"](x, y, name=name)


def greater(x, y, name=None):
    return _COMPARE["Greater"](x, y, name=name)


def greater_equal(x, y, name=None):
    return _COMPARE["GreaterEqual"](x, y, name=name)


def not_equal(x, y, name=None):
    return _COMPARE["NotEqual"](x, y, name=name)


def logical_and(x, y, name=None):
    return _COMPARE["LogicalAnd"](x, y, name=name)


def logical_or(x, y, name=None):
    return _COMPARE["LogicalOr"](x, y, name=name)


def logical_xor(x, y, name=None):
    return _COMPARE["LogicalXor"](x, y, name=name)


def logical_not(x, name=None):
    return LogicalNot(x, name=name)


class Where(Node):
    """where(condition, x, y): x where condition holds, else y (broadcasting)."""

    def __init__(self, condition, x, y, name=None):
        condition = convert_to_tensor(condition)
        x, y = binary_operands(x, y)
        super().__init__((condition, x, y), name=name or "Select", shape=x.shape or y.shape,
                         dtype=np.result_type(x.dtype, y.dtype))

    def forward(self, condition, x, y):
        return np.where(condition, x, y)


@register_gradient(Where)
def _where_grad(op, grad):
    condition, x, y = op.inputs
    dx = NumpyFn(lambda c, g: np.where(c, g, 0), (condition, grad), op.shape, grad.dtype,
             "SelectGrad")
    dy = NumpyFn(lambda c, g: np.where(c, 0, g), (condition, grad), op.shape, grad.dtype,
             "SelectGrad")
    return [None, sum_to_shape_of(dx, x, op), sum_to_shape_of(dy, y, op)]


class WhereIndices(Node):
    """where(condition): the coordinates of the true elements, shape (count, rank)."""

    def __init__(self, condition, name=None):
        condition = convert_to_tensor(condition)
        rank = None if condition.shape is None else len(condition.shape)
        super().__init__((condition,), name=name or "Where", shape=(None, rank),
                         dtype=np.dtype(np.int64))

    def forward(self, condition):
        return np.argwhere(condition).astype(np.int64)


def where(condition, x=None, y=None, name=None):
    if x is None and y is None:
        return WhereIndices(condition, name=name)
    if x is None or y is None:
        raise ValueError("where: give both x and y, or neither")
    return Where(condition, x, y, name=name)
