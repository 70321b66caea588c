"""What every elementwise op shares: turning Python numbers into operands of the other
operand's dtype, the static shape of broadcasting, the one helper that sums a gradient back over
broadcast axes (`sum_to_shape_of`), and op classes made from a numpy function and its
derivative."""

import numpy as np

from .gradient_registry import register_gradient
from .graph import Node, convert_to_tensor
from .shapes import broadcast_static


def binary_operands(a, b):
    """Converts Python numbers to constants of the other operand's dtype (`x * 2`)."""
    if isinstance(a, Node) and not isinstance(b, Node):
        b = convert_to_tensor(b, dtype=a.dtype, graph=a.graph)
    elif isinstance(b, Node) and not isinstance(a, Node):
        a = convert_to_tensor(a, dtype=b.dtype, graph=b.graph)
    else:
        a, b = convert_to_tensor(a), convert_to_tensor(b)
    return a, b


def result_dtype(*nodes):
    """The dtype numpy gives an operation on the values of `nodes` (None if none has one)."""
    dtypes = [n.dtype for n in nodes if n.dtype is not None]
    return np.result_type(*dtypes) if dtypes else None


class Binary(Node):
    """An elementwise op of two broadcasting inputs."""

    def __init__(self, a, b, name=None):
        a, b = binary_operands(a, b)
        super().__init__((a, b), name=name, shape=broadcast_static(a.shape, b.shape),
                         dtype=result_dtype(a, b))


class Unary(Node):
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
    for axis, (dim, out_dim) in enumerate(zip(x.shape, out.shape, strict=True)):
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


class NumpyFn(Node):
    """fn(*input values), computed with numpy: the body of a gradient that is easier to write
    as one numpy function than as a graph of ops."""

    def __init__(self, fn, inputs, shape, dtype, name):
        self.fn = fn
        super().__init__(inputs, name=name, shape=shape, dtype=dtype)

    def forward(self, *values):
        return self.fn(*values)


def unary_op_class(name, forward, derivative=None, dtype=None):
    """An elementwise op class; `derivative(x, y, grad)` gives the input's gradient."""
    body = {"forward": lambda self, x: forward(x)}
    if dtype is not None:
        def init(self, x, name=None):
            x = convert_to_tensor(x)
            Node.__init__(self, (x,), name=name, shape=x.shape, dtype=np.dtype(dtype))
        body["__init__"] = init
    cls = type(name, (Unary,), body)
    if derivative is not None:
        @register_gradient(cls)
        def _grad(op, grad):
            x = op.inputs[0]
            return [NumpyFn(derivative, (x, op, grad), x.shape, grad.dtype, f"{name}Grad")]
    return cls


def binary_op_class(name, forward, derivatives=None, dtype=None):
    """An elementwise op of two broadcasting inputs; `derivatives` (da, db), each
    fn(a, b, y, grad), give the gradients before summing over broadcast axes."""
    body = {"forward": lambda self, a, b: forward(a, b)}
    if dtype is not None:
        def init(self, a, b, name=None):
            Binary.__init__(self, a, b, name=name)
            self.dtype = np.dtype(dtype)
        body["__init__"] = init
    cls = type(name, (Binary,), body)
    if derivatives is not None:
        @register_gradient(cls)
        def _grad(op, grad):
            a, b = op.inputs
            return [sum_to_shape_of(NumpyFn(d, (a, b, op, grad), op.shape, grad.dtype,
                                            f"{name}Grad"), x, op)
                    for d, x in zip(derivatives, (a, b), strict=True)]
    return cls
