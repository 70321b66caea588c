"""Arithmetic: elementwise (add, multiply, ..., maximum, pow), matmul, add_n and casts; each
op's gradient sits right below it, and the operators `+ - * / @` on every node.

Forward functions never write into their inputs: a value may be a variable's storage or a
read-only view.
"""

import numpy as np

from .dtypes import as_dtype
from .elementwise import (
    Binary,
    SumToShape,
    Unary,
    binary_op_class,
    result_dtype,
    sum_to_shape_of,
    unary_op_class,
)
from .gradient_registry import register_gradient
from .graph import Node, convert_to_tensor
from .shapes import broadcast_static, format_shape


class Add(Binary):
    def forward(self, a, b):
        return a + b


@register_gradient(Add)
def _add_grad(op, grad):
    a, b = op.inputs
    return [sum_to_shape_of(grad, a, op), sum_to_shape_of(grad, b, op)]


class Subtract(Binary):
    def forward(self, a, b):
        return a - b


@register_gradient(Subtract)
def _subtract_grad(op, grad):
    a, b = op.inputs
    return [sum_to_shape_of(grad, a, op), sum_to_shape_of(negative(grad), b, op)]


class Multiply(Binary):
    def forward(self, a, b):
        return a * b


@register_gradient(Multiply)
def _multiply_grad(op, grad):
    a, b = op.inputs
    return [sum_to_shape_of(grad * b, a, op), sum_to_shape_of(grad * a, b, op)]


class Divide(Binary):
    def forward(self, a, b):
        return a / b


@register_gradient(Divide)
def _divide_grad(op, grad):
    a, b = op.inputs
    # d(a/b)/db = -a/b^2 = -(a/b)/b, reusing the op's own output.
    return [sum_to_shape_of(grad / b, a, op), sum_to_shape_of(negative(grad * op / b), b, op)]


class Negative(Unary):
    def forward(self, x):
        return -x


@register_gradient(Negative)
def _negative_grad(op, grad):
    return [negative(grad)]


class Identity(Unary):
    def forward(self, x):
        return x


@register_gradient(Identity)
def _identity_grad(op, grad):
    return [grad]


class Exp(Unary):
    def forward(self, x):
        return np.exp(x)


@register_gradient(Exp)
def _exp_grad(op, grad):
    return [grad * op]


class Log(Unary):
    def forward(self, x):
        return np.log(x)


@register_gradient(Log)
def _log_grad(op, grad):
    return [grad / op.inputs[0]]


class Square(Unary):
    def forward(self, x):
        return np.square(x)


@register_gradient(Square)
def _square_grad(op, grad):
    return [grad * (op.inputs[0] * 2)]


class Sqrt(Unary):
    def forward(self, x):
        return np.sqrt(x)


@register_gradient(Sqrt)
def _sqrt_grad(op, grad):
    return [grad * 0.5 / op]


Abs = unary_op_class("Abs", np.abs, lambda x, y, g: g * np.sign(x))
Sign = unary_op_class("Sign", np.sign, lambda x, y, g: np.zeros_like(g))
Floor = unary_op_class("Floor", np.floor)
Round = unary_op_class("Round", np.round)  # half to even, as TF
Maximum = binary_op_class("Maximum", np.maximum,
                          (lambda a, b, y, g: g * (a >= b), lambda a, b, y, g: g * (a < b)))
Minimum = binary_op_class("Minimum", np.minimum,
                          (lambda a, b, y, g: g * (a <= b), lambda a, b, y, g: g * (a > b)))
Pow = binary_op_class("Pow", np.power, (
    lambda a, b, y, g: g * b * np.power(a, b - 1),
    lambda a, b, y, g: g * y * np.log(np.where(a > 0, a, 1)) * (a > 0)))


class MatMul(Node):
    """`a @ b` over the last two axes, optionally transposing either operand first."""

    def __init__(self, a, b, transpose_a=False, transpose_b=False, name=None):
        a, b = convert_to_tensor(a), convert_to_tensor(b)
        self.transpose_a, self.transpose_b = transpose_a, transpose_b
        shape = None
        if a.shape is not None and b.shape is not None:
            if len(a.shape) < 2 or len(b.shape) < 2:
                raise ValueError(f"matmul needs operands of rank >= 2, got shapes "
                                 f"{format_shape(a.shape)} and {format_shape(b.shape)}")
            m, ka = (a.shape[-1], a.shape[-2]) if transpose_a else a.shape[-2:]
            kb, n = (b.shape[-1], b.shape[-2]) if transpose_b else b.shape[-2:]
            if ka is not None and kb is not None and ka != kb:
                raise ValueError(f"matmul: inner dimensions differ: {format_shape(a.shape)} "
                                 f"@ {format_shape(b.shape)}")
            shape = broadcast_static(a.shape[:-2], b.shape[:-2]) + (m, n)
        super().__init__((a, b), name=name, shape=shape, dtype=result_dtype(a, b))

    def forward(self, a, b):
        if self.transpose_a:
            a = a.swapaxes(-1, -2)
        if self.transpose_b:
            b = b.swapaxes(-1, -2)
        return np.matmul(a, b)


@register_gradient(MatMul)
def _matmul_grad(op, grad):
    a, b = op.inputs
    ta, tb = op.transpose_a, op.transpose_b
    if not ta and not tb:
        grads = [matmul(grad, b, transpose_b=True), matmul(a, grad, transpose_a=True)]
    elif not ta and tb:
        grads = [matmul(grad, b), matmul(grad, a, transpose_a=True)]
    elif ta and not tb:
        grads = [matmul(b, grad, transpose_b=True), matmul(a, grad)]
    else:
        grads = [matmul(b, grad, transpose_a=True, transpose_b=True),
                 matmul(grad, a, transpose_a=True, transpose_b=True)]
    if a.shape is not None and b.shape is not None and len(a.shape) == len(b.shape) == 2:
        return grads
    # Batch axes broadcast like an elementwise op's: sum each gradient over the batch axes
    # its operand was broadcast along.
    return [SumToShape(g, x.shape if x.shape is not None and None not in x.shape else x)
            for g, x in zip(grads, (a, b), strict=False)]


class Cast(Node):
    def __init__(self, x, dtype, name=None):
        x = convert_to_tensor(x)
        super().__init__((x,), name=name, shape=x.shape, dtype=as_dtype(dtype))

    def forward(self, x):
        return np.asarray(x).astype(self.dtype, copy=False)


@register_gradient(Cast)
def _cast_grad(op, grad):
    x = op.inputs[0]
    if x.dtype is not None and x.dtype.kind != "f":
        return [None]
    return [cast(grad, x.dtype)]


class AddN(Node):
    def __init__(self, inputs, name=None):
        inputs = [convert_to_tensor(x) for x in inputs]
        shape = inputs[0].shape
        for x in inputs[1:]:
            shape = broadcast_static(shape, x.shape)
        super().__init__(inputs, name=name, shape=shape, dtype=result_dtype(*inputs))

    def forward(self, *values):
        total = values[0] + values[1]
        for v in values[2:]:
            total = np.add(total, v, out=total) if v.shape == total.shape else total + v
        return total


@register_gradient(AddN)
def _add_n_grad(op, grad):
    return [sum_to_shape_of(grad, x, op) for x in op.inputs]


class OnesLike(Unary):
    def forward(self, x):
        return np.ones_like(x)


class ZerosLike(Unary):
    def forward(self, x):
        return np.zeros_like(x)


# Public functions, TF1 names.

def add(a, b, name=None):
    return Add(a, b, name=name)


def subtract(a, b, name=None):
    return Subtract(a, b, name=name)


def multiply(a, b, name=None):
    return Multiply(a, b, name=name)


def divide(a, b, name=None):
    return Divide(a, b, name=name)


def negative(x, name=None):
    return Negative(x, name=name)


def identity(x, name=None):
    return Identity(x, name=name)


def exp(x, name=None):
    return Exp(x, name=name)


def log(x, name=None):
    return Log(x, name=name)


def square(x, name=None):
    return Square(x, name=name)


def sqrt(x, name=None):
    return Sqrt(x, name=name)


def matmul(a, b, transpose_a=False, transpose_b=False, name=None):
    return MatMul(a, b, transpose_a=transpose_a, transpose_b=transpose_b, name=name)


def abs(x, name=None):  # noqa: A001 (TF's name)
    return Abs(x, name=name)


def sign(x, name=None):
    return Sign(x, name=name)


def floor(x, name=None):
    return Floor(x, name=name)


def round(x, name=None):  # noqa: A001
    return Round(x, name=name)


def maximum(x, y, name=None):
    return Maximum(x, y, name=name)


def minimum(x, y, name=None):
    return Minimum(x, y, name=name)


def pow(x, y, name=None):  # noqa: A001
    return Pow(x, y, name=name)


def cast(x, dtype, name=None):
    return Cast(x, dtype, name=name)


def add_n(inputs, name=None):
    inputs = list(inputs)
    if not inputs:
        raise ValueError("add_n needs at least one input")
    return convert_to_tensor(inputs[0]) if len(inputs) == 1 else AddN(inputs, name=name)


def ones_like(x, name=None):
    return OnesLike(x, name=name)


def zeros_like(x, name=None):
    return ZerosLike(x, name=name)


# Operator overloading on every node: `a + b`, `2 * x`, `x @ w`, `-x`.
Node.__add__ = lambda self, other: Add(self, other)
Node.__radd__ = lambda self, other: Add(other, self)
Node.__sub__ = lambda self, other: Subtract(self, other)
Node.__rsub__ = lambda self, other: Subtract(other, self)
Node.__mul__ = lambda self, other: Multiply(self, other)
Node.__rmul__ = lambda self, other: Multiply(other, self)
Node.__truediv__ = lambda self, other: Divide(self, other)
Node.__rtruediv__ = lambda self, other: Divide(other, self)
Node.__matmul__ = lambda self, other: MatMul(self, other)
Node.__rmatmul__ = lambda self, other: MatMul(other, self)
Node.__neg__ = lambda self: Negative(self)
