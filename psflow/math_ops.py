"""Elementwise arithmetic, matmul, reductions and casts; each op's gradient sits right below it.

Forward functions never write into their inputs: a value may be a variable's storage or a
read-only view.
"""

import numpy as np

from .graph import (Node, as_dtype, broadcast_static, convert_to_tensor, format_shape)
from .gradients import IndexedSlices, register_gradient


def _binary(a, b):
    """Converts Python numbers to constants of the other operand's dtype (`x * 2`)."""
    if isinstance(a, Node) and not isinstance(b, Node):
        b = convert_to_tensor(b, dtype=a.dtype, graph=a.graph)
    elif isinstance(b, Node) and not isinstance(a, Node):
        a = convert_to_tensor(a, dtype=b.dtype, graph=b.graph)
    else:
        a, b = convert_to_tensor(a), convert_to_tensor(b)
    return a, b


def _result_dtype(*nodes):
    dtypes = [n.dtype for n in nodes if n.dtype is not None]
    return np.result_type(*dtypes) if dtypes else None


class _Binary(Node):
    """An elementwise op of two broadcasting inputs."""

    def __init__(self, a, b, name=None):
        a, b = _binary(a, b)
        super().__init__((a, b), name=name, shape=broadcast_static(a.shape, b.shape),
                         dtype=_result_dtype(a, b))


class _Unary(Node):
    """An elementwise op of one input; the output has the input's shape and dtype."""

    def __init__(self, x, name=None):
        x = convert_to_tensor(x)
        super().__init__((x,), name=name, shape=x.shape, dtype=x.dtype)


class SumToShape(Node):
    """Sums a broadcast gradient back to the shape of the operand it came from.

    `like` is either a fully known static shape or the operand node, whose run-time shape is
    then used. Every elementwise gradient goes through `sum_to_shape_of`.
    """

    def __init__(self, grad, like):
        if isinstance(like, Node):
            super().__init__((grad, like), shape=like.shape, dtype=grad.dtype)
            self.target = None
        else:
            super().__init__((grad,), shape=like, dtype=grad.dtype)
            self.target = like

    def forward(self, grad, like=None):
        target = self.target if like is None else np.shape(like)
        if grad.shape == target:
            return grad
        lead = grad.ndim - len(target)
        if lead > 0 and grad.shape[lead:] == target:  # only leading axes were broadcast
            return grad.sum(axis=tuple(range(lead)))
        axes = tuple(range(lead)) + tuple(
            lead + i for i, dim in enumerate(target) if dim == 1 and grad.shape[lead + i] != 1)
        out = grad.sum(axis=axes, keepdims=True) if axes else grad
        return out.reshape(target)


def sum_to_shape_of(grad, x, out):
    """The gradient for input `x` of an elementwise op whose output is `out`: `grad` itself
    when no broadcasting can have happened, else a node summing over the broadcast axes."""
    if x.shape is not None and None not in x.shape:
        if x.shape == out.shape:
            return grad
        return SumToShape(grad, x.shape)
    if _fixes_output_shape(x, out):
        return grad
    return SumToShape(grad, x)


def _fixes_output_shape(x, out):
    """True if `x` surely has the run-time shape of `out`: the same rank, the same known
    dimensions, and where x's dimension is unknown every other operand has a 1 or nothing."""
    if x.shape is None or out.shape is None or len(x.shape) != len(out.shape):
        return False
    rank = len(out.shape)
    for axis, (dim, out_dim) in enumerate(zip(x.shape, out.shape)):
        if dim is not None:
            if dim != out_dim:
                return False
            continue
        for other in out.inputs:
            if other is x:
                continue
            if other.shape is None:
                return False
            other_axis = axis - rank + len(other.shape)
            if other_axis >= 0 and other.shape[other_axis] != 1:
                return False
    return True


class Add(_Binary):
    def forward(self, a, b):
        return a + b


@register_gradient(Add)
def _add_grad(op, grad):
    a, b = op.inputs
    return [sum_to_shape_of(grad, a, op), sum_to_shape_of(grad, b, op)]


class Subtract(_Binary):
    def forward(self, a, b):
        return a - b


@register_gradient(Subtract)
def _subtract_grad(op, grad):
    a, b = op.inputs
    return [sum_to_shape_of(grad, a, op), sum_to_shape_of(negative(grad), b, op)]


class Multiply(_Binary):
    def forward(self, a, b):
        return a * b


@register_gradient(Multiply)
def _multiply_grad(op, grad):
    a, b = op.inputs
    return [sum_to_shape_of(grad * b, a, op), sum_to_shape_of(grad * a, b, op)]


class Divide(_Binary):
    def forward(self, a, b):
        return a / b


@register_gradient(Divide)
def _divide_grad(op, grad):
    a, b = op.inputs
    # d(a/b)/db = -a/b^2 = -(a/b)/b, reusing the op's own output.
    return [sum_to_shape_of(grad / b, a, op), sum_to_shape_of(negative(grad * op / b), b, op)]


class Negative(_Unary):
    def forward(self, x):
        return -x


@register_gradient(Negative)
def _negative_grad(op, grad):
    return [negative(grad)]


class Identity(_Unary):
    def forward(self, x):
        return x


@register_gradient(Identity)
def _identity_grad(op, grad):
    return [grad]


class Exp(_Unary):
    def forward(self, x):
        return np.exp(x)


@register_gradient(Exp)
def _exp_grad(op, grad):
    return [grad * op]


class Log(_Unary):
    def forward(self, x):
        return np.log(x)


@register_gradient(Log)
def _log_grad(op, grad):
    return [grad / op.inputs[0]]


class Square(_Unary):
    def forward(self, x):
        return np.square(x)


@register_gradient(Square)
def _square_grad(op, grad):
    return [grad * (op.inputs[0] * 2)]


class Sqrt(_Unary):
    def forward(self, x):
        return np.sqrt(x)


@register_gradient(Sqrt)
def _sqrt_grad(op, grad):
    return [grad * 0.5 / op]


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
        super().__init__((a, b), name=name, shape=shape, dtype=_result_dtype(a, b))

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
            for g, x in zip(grads, (a, b))]


def _normalize_axis(axis, ndim):
    if axis is None:
        return None
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    if ndim is None:
        return tuple(int(a) for a in axes)
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for a tensor of rank {ndim}")
        out.append(int(a) % ndim)
    return tuple(sorted(out))


class _Reduce(Node):
    def __init__(self, x, axis=None, keepdims=False, name=None):
        x = convert_to_tensor(x)
        ndim = None if x.shape is None else len(x.shape)
        self.axis = _normalize_axis(axis, ndim)
        self.keepdims = bool(keepdims)
        shape = None
        if x.shape is not None:
            axes = range(len(x.shape)) if self.axis is None else self.axis
            shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape)) \
                if self.keepdims else tuple(d for i, d in enumerate(x.shape) if i not in axes)
        super().__init__((x,), name=name, shape=shape, dtype=x.dtype)


class ReduceSum(_Reduce):
    def forward(self, x):
        return np.sum(x, axis=self.axis, keepdims=self.keepdims)


class ReduceMean(_Reduce):
    def forward(self, x):
        return np.mean(x, axis=self.axis, keepdims=self.keepdims)


class ReduceGrad(Node):
    """Spreads the gradient of a sum (or, with `mean=True`, a mean) back over the reduced
    axes of `x`."""

    def __init__(self, grad, x, axis, keepdims, mean):
        self.axis, self.keepdims, self.mean = axis, keepdims, mean
        super().__init__((grad, x), shape=x.shape, dtype=grad.dtype)

    def forward(self, grad, x):
        axes = tuple(range(x.ndim)) if self.axis is None else self.axis
        if not self.keepdims:
            grad = np.expand_dims(grad, axes)
        if self.mean:
            grad = grad * (grad.size / x.size) if x.size else grad
        return np.broadcast_to(grad, x.shape)


@register_gradient(ReduceSum)
def _reduce_sum_grad(op, grad):
    return [ReduceGrad(grad, op.inputs[0], op.axis, op.keepdims, mean=False)]


@register_gradient(ReduceMean)
def _reduce_mean_grad(op, grad):
    return [ReduceGrad(grad, op.inputs[0], op.axis, op.keepdims, mean=True)]


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


class Argmax(Node):
    """Index of the largest value along `axis` (no gradient)."""

    def __init__(self, x, axis, output_type=np.int64, name=None):
        x = convert_to_tensor(x)
        self.axis = int(axis)
        shape = None
        if x.shape is not None:
            ax = _normalize_axis(self.axis, len(x.shape))[0]
            shape = x.shape[:ax] + x.shape[ax + 1:]
        super().__init__((x,), name=name, shape=shape, dtype=as_dtype(output_type))

    def forward(self, x):
        return np.argmax(x, axis=self.axis).astype(self.dtype, copy=False)


class Equal(Node):
    """Elementwise `a == b` as booleans (no gradient)."""

    def __init__(self, a, b, name=None):
        a, b = _binary(a, b)
        super().__init__((a, b), name=name, shape=broadcast_static(a.shape, b.shape),
                         dtype=np.dtype(np.bool_))

    def forward(self, a, b):
        return np.equal(a, b)


class AddN(Node):
    def __init__(self, inputs, name=None):
        inputs = [convert_to_tensor(x) for x in inputs]
        shape = inputs[0].shape
        for x in inputs[1:]:
            shape = broadcast_static(shape, x.shape)
        super().__init__(inputs, name=name, shape=shape, dtype=_result_dtype(*inputs))

    def forward(self, *values):
        total = values[0] + values[1]
        for v in values[2:]:
            total = np.add(total, v, out=total) if v.shape == total.shape else total + v
        return total


@register_gradient(AddN)
def _add_n_grad(op, grad):
    return [sum_to_shape_of(grad, x, op) for x in op.inputs]


class OnesLike(_Unary):
    def forward(self, x):
        return np.ones_like(x)


class ZerosLike(_Unary):
    def forward(self, x):
        return np.zeros_like(x)


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


def reduction_args(axis, keepdims, reduction_indices, keep_dims):
    """TF1's old names (reduction_indices, keep_dims) beside the new (axis, keepdims)."""
    if reduction_indices is not None:
        if axis is not None:
            raise ValueError("give axis or reduction_indices, not both")
        axis = reduction_indices
    if keep_dims is not None:
        keepdims = keep_dims
    return axis, keepdims


def reduce_sum(x, axis=None, keepdims=False, name=None, reduction_indices=None,
               keep_dims=None):
    axis, keepdims = reduction_args(axis, keepdims, reduction_indices, keep_dims)
    return ReduceSum(x, axis=axis, keepdims=keepdims, name=name)


def reduce_mean(x, axis=None, keepdims=False, name=None, reduction_indices=None,
                keep_dims=None):
    axis, keepdims = reduction_args(axis, keepdims, reduction_indices, keep_dims)
    return ReduceMean(x, axis=axis, keepdims=keepdims, name=name)


def cast(x, dtype, name=None):
    return Cast(x, dtype, name=name)


def argmax(x, axis=None, output_type=np.int64, name=None):
    """Index of the maximum along `axis` (TF1's default axis is 0)."""
    return Argmax(x, 0 if axis is None else axis, output_type=output_type, name=name)


def equal(a, b, name=None):
    return Equal(a, b, name=name)


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
