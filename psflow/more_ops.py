"""More of TF1's everyday ops: elementwise maximum/minimum/abs/pow/sign/floor/round and
comparisons, where, reduce_max/min/prod, stack/unstack/squeeze/expand_dims/tile, and the nn
helpers leaky_relu, elu, dropout, xw_plus_b, moments, clip_by_value and
clip_by_global_norm, with gradients where TF has them."""

import numpy as np

from .gradients import register_gradient
from .graph import Node, convert_to_tensor, float32
from .initializers import _generator
from .math_ops import (_Binary, _Reduce, _Unary, _binary, add, matmul,
                       reduce_mean, reduce_sum, reduction_args, sqrt, square, sum_to_shape_of)


class _Fn(Node):
    """fn(*input values), computed with numpy: the body of the gradients below."""

    def __init__(self, fn, inputs, shape, dtype, name):
        self.fn = fn
        super().__init__(inputs, name=name, shape=shape, dtype=dtype)

    def forward(self, *values):
        return self.fn(*values)


def _unary_op(name, forward, derivative=None, dtype=None):
    """An elementwise op class; `derivative(x, y, grad)` gives the input's gradient."""
    body = {"forward": lambda self, x: forward(x)}
    if dtype is not None:
        def init(self, x, name=None):
            x = convert_to_tensor(x)
            Node.__init__(self, (x,), name=name, shape=x.shape, dtype=np.dtype(dtype))
        body["__init__"] = init
    cls = type(name, (_Unary,), body)
    if derivative is not None:
        @register_gradient(cls)
        def _grad(op, grad):
            x = op.inputs[0]
            return [_Fn(derivative, (x, op, grad), x.shape, grad.dtype, f"{name}Grad")]
    return cls


def _binary_op(name, forward, derivatives=None, dtype=None):
    """An elementwise op of two broadcasting inputs; `derivatives` (da, db), each
    fn(a, b, y, grad), give the gradients before summing over broadcast axes."""
    body = {"forward": lambda self, a, b: forward(a, b)}
    if dtype is not None:
        def init(self, a, b, name=None):
            _Binary.__init__(self, a, b, name=name)
            self.dtype = np.dtype(dtype)
        body["__init__"] = init
    cls = type(name, (_Binary,), body)
    if derivatives is not None:
        @register_gradient(cls)
        def _grad(op, grad):
            a, b = op.inputs
            return [sum_to_shape_of(_Fn(d, (a, b, op, grad), op.shape, grad.dtype,
                                        f"{name}Grad"), x, op)
                    for d, x in zip(derivatives, (a, b))]
    return cls


Abs = _unary_op("Abs", np.abs, lambda x, y, g: g * np.sign(x))
Sign = _unary_op("Sign", np.sign, lambda x, y, g: np.zeros_like(g))
Floor = _unary_op("Floor", np.floor)
Round = _unary_op("Round", np.round)  # half to even, as TF
LogicalNot = _unary_op("LogicalNot", np.logical_not, dtype=np.bool_)
Maximum = _binary_op("Maximum", np.maximum,
                     (lambda a, b, y, g: g * (a >= b), lambda a, b, y, g: g * (a < b)))
Minimum = _binary_op("Minimum", np.minimum,
                     (lambda a, b, y, g: g * (a <= b), lambda a, b, y, g: g * (a > b)))
Pow = _binary_op("Pow", np.power, (
    lambda a, b, y, g: g * b * np.power(a, b - 1),
    lambda a, b, y, g: g * y * np.log(np.where(a > 0, a, 1)) * (a > 0)))
_COMPARISONS = {"Less": np.less, "LessEqual": np.less_equal, "Greater": np.greater,
                "GreaterEqual": np.greater_equal, "NotEqual": np.not_equal,
                "LogicalAnd": np.logical_and, "LogicalOr": np.logical_or,
                "LogicalXor": np.logical_xor}
_COMPARE = {name: _binary_op(name, fn, dtype=np.bool_) for name, fn in _COMPARISONS.items()}


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
        x, y = _binary(x, y)
        super().__init__((condition, x, y), name=name or "Select", shape=x.shape or y.shape,
                         dtype=np.result_type(x.dtype, y.dtype))

    def forward(self, condition, x, y):
        return np.where(condition, x, y)


@register_gradient(Where)
def _where_grad(op, grad):
    condition, x, y = op.inputs
    dx = _Fn(lambda c, g: np.where(c, g, 0), (condition, grad), op.shape, grad.dtype,
             "SelectGrad")
    dy = _Fn(lambda c, g: np.where(c, 0, g), (condition, grad), op.shape, grad.dtype,
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


class ReduceMax(_Reduce):
    def forward(self, x):
        return np.max(x, axis=self.axis, keepdims=self.keepdims)


class ReduceMin(_Reduce):
    def forward(self, x):
        return np.min(x, axis=self.axis, keepdims=self.keepdims)


class ReduceProd(_Reduce):
    def forward(self, x):
        return np.prod(x, axis=self.axis, keepdims=self.keepdims)


def _expand(op, value, x):
    axes = tuple(range(x.ndim)) if op.axis is None else op.axis
    return value if op.keepdims else np.expand_dims(value, axes)


def _extreme_grad(op, grad):
    x = op.inputs[0]

    def spread(x, y, g):
        hits = x == _expand(op, y, x)  # ties share the gradient, as TF
        count = np.sum(hits, axis=op.axis, keepdims=True)
        return hits * (_expand(op, g, x) / count)
    return [_Fn(spread, (x, op, grad), x.shape, grad.dtype, f"{type(op).__name__}Grad")]


register_gradient(ReduceMax)(_extreme_grad)
register_gradient(ReduceMin)(_extreme_grad)


@register_gradient(ReduceProd)
def _prod_grad(op, grad):
    x = op.inputs[0]

    def others(x, g):
        # the product of the other elements of each reduced group, exactly (zeros too)
        axes = tuple(range(x.ndim)) if op.axis is None else op.axis
        kept = [i for i in range(x.ndim) if i not in axes]
        moved = np.transpose(x, kept + list(axes))
        flat = moved.reshape(moved.shape[:len(kept)] + (-1,))
        left = np.cumprod(np.concatenate([np.ones(flat.shape[:-1] + (1,), x.dtype),
                                          flat[..., :-1]], axis=-1), axis=-1)
        right = np.flip(np.cumprod(np.concatenate(
            [np.ones(flat.shape[:-1] + (1,), x.dtype), np.flip(flat, -1)[..., :-1]],
            axis=-1), axis=-1), -1)
        leave_one_out = (left * right).reshape(moved.shape)
        back = np.transpose(leave_one_out, np.argsort(kept + list(axes)))
        return back * _expand(op, g, x)
    return [_Fn(others, (x, grad), x.shape, grad.dtype, "ProdGrad")]


def reduce_max(x, axis=None, keepdims=False, name=None, reduction_indices=None,
               keep_dims=None):
    axis, keepdims = reduction_args(axis, keepdims, reduction_indices, keep_dims)
    return ReduceMax(x, axis=axis, keepdims=keepdims, name=name)


def reduce_min(x, axis=None, keepdims=False, name=None, reduction_indices=None,
               keep_dims=None):
    axis, keepdims = reduction_args(axis, keepdims, reduction_indices, keep_dims)
    return ReduceMin(x, axis=axis, keepdims=keepdims, name=name)


def reduce_prod(x, axis=None, keepdims=False, name=None, reduction_indices=None,
                keep_dims=None):
    axis, keepdims = reduction_args(axis, keepdims, reduction_indices, keep_dims)
    return ReduceProd(x, axis=axis, keepdims=keepdims, name=name)


# -- shapes ----------------------------------------------------------------------------------
class Stack(Node):
    def __init__(self, values, axis=0, name=None):
        values = [convert_to_tensor(v) for v in values]
        if not values:
            raise ValueError("stack: no values")
        shape = values[0].shape
        rank = None if shape is None else len(shape) + 1
        self.axis = axis if rank is None or axis >= 0 else axis + rank
        out = None if shape is None else \
            tuple(shape[:self.axis]) + (len(values),) + tuple(shape[self.axis:])
        super().__init__(values, name=name or "stack", shape=out,
                         dtype=np.result_type(*[v.dtype for v in values]))

    def forward(self, *values):
        return np.stack(values, axis=self.axis)


@register_gradient(Stack)
def _stack_grad(op, grad):
    return [_Fn(lambda g, k=k: np.take(g, k, axis=op.axis), (grad,), v.shape, grad.dtype,
                "UnstackGrad") for k, v in enumerate(op.inputs)]


def stack(values, axis=0, name=None):
    return Stack(values, axis, name)


def unstack(value, num=None, axis=0, name=None):
    value = convert_to_tensor(value)
    if num is None:
        if value.shape is None or value.shape[axis] is None:
            raise ValueError(f"unstack: the size of axis {axis} of {value.name!r} is not "
                             "known; pass num=")
        num = value.shape[axis]
    from .array_ops import GetItem
    rank = None if value.shape is None else len(value.shape)
    if rank is None:
        raise ValueError(f"unstack: the rank of {value.name!r} is not known")
    axis = axis if axis >= 0 else axis + rank
    return [GetItem(value, (slice(None),) * axis + (k,)) for k in range(num)]


class Reshaped(Node):
    """squeeze / expand_dims / tile: `fn` reshapes a value; the gradient undoes it with
    `undo(grad, x)`."""

    def __init__(self, x, fn, undo, shape, name):
        self.fn, self.undo = fn, undo
        x = convert_to_tensor(x)
        super().__init__((x,), name=name, shape=shape, dtype=x.dtype)

    def forward(self, x):
        return self.fn(x)


@register_gradient(Reshaped)
def _reshaped_grad(op, grad):
    x = op.inputs[0]
    return [_Fn(op.undo, (grad, x), x.shape, grad.dtype, f"{op.name}Grad")]


def _reshape_back(g, x):
    return np.reshape(g, np.shape(x))


def squeeze(x, axis=None, name=None, squeeze_dims=None):
    x = convert_to_tensor(x)
    axis = squeeze_dims if axis is None else axis
    axes = None if axis is None else tuple(np.atleast_1d(axis).tolist())
    shape = None
    if x.shape is not None:
        if axes is None:
            shape = None if None in x.shape else tuple(d for d in x.shape if d != 1)
        else:
            norm = {a % len(x.shape) for a in axes}
            shape = tuple(d for i, d in enumerate(x.shape) if i not in norm)
    return Reshaped(x, lambda v: np.squeeze(v, axis=axes), _reshape_back, shape,
                    name or "Squeeze")


def expand_dims(x, axis, name=None, dim=None):
    x = convert_to_tensor(x)
    axis = dim if dim is not None else axis
    shape = None
    if x.shape is not None:
        rank = len(x.shape) + 1
        at = axis if axis >= 0 else axis + rank
        shape = tuple(x.shape[:at]) + (1,) + tuple(x.shape[at:])
    return Reshaped(x, lambda v: np.expand_dims(v, axis), _reshape_back, shape,
                    name or "ExpandDims")


def tile(x, multiples, name=None):
    x = convert_to_tensor(x)
    multiples = tuple(int(m) for m in multiples)
    shape = None if x.shape is None else tuple(
        None if d is None else d * m for d, m in zip(x.shape, multiples))

    def undo(g, v):
        split = []
        for m, d in zip(multiples, np.shape(v)):
            split += [m, d]
        return np.reshape(g, split).sum(axis=tuple(range(0, 2 * len(multiples), 2)))
    return Reshaped(x, lambda v: np.tile(v, multiples), undo, shape, name or "Tile")


# -- nn ----------------------------------------------------------------------------------------
class _LeakyRelu(_Unary):
    def __init__(self, x, alpha, name=None):
        self.alpha = float(alpha)
        super().__init__(x, name=name or "LeakyRelu")

    def forward(self, x):
        return np.where(x > 0, x, self.alpha * x).astype(x.dtype, copy=False)


@register_gradient(_LeakyRelu)
def _leaky_relu_grad(op, grad):
    x = op.inputs[0]
    return [_Fn(lambda v, g: np.where(v > 0, g, op.alpha * g), (x, grad), x.shape,
                grad.dtype, "LeakyReluGrad")]


def leaky_relu(features, alpha=0.2, name=None):
    return _LeakyRelu(features, alpha, name)


Elu = _unary_op("Elu", lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
                lambda x, y, g: np.where(x > 0, g, g * (y + 1)))


def elu(features, name=None):
    return Elu(features, name=name)


class Dropout(Node):
    """Zeroes each element with probability `rate` and scales the rest by 1 / (1 - rate);
    `noise_shape` broadcasts one draw over axes. A fresh draw each run."""

    def __init__(self, x, rate, noise_shape, seed, name=None):
        x = convert_to_tensor(x)
        self.rate = convert_to_tensor(rate, dtype=x.dtype)
        self.noise_shape = None if noise_shape is None else tuple(noise_shape)
        self.rng = _generator(seed)
        super().__init__((x, self.rate), name=name or "dropout", shape=x.shape, dtype=x.dtype)

    def forward(self, x, rate):
        rate = float(rate)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout: rate must be in [0, 1), got {rate}")
        shape = np.shape(x) if self.noise_shape is None else self.noise_shape
        keep = self.rng.random(shape) >= rate
        self.last_mask = keep / (1.0 - rate)
        return (x * self.last_mask).astype(x.dtype, copy=False)


@register_gradient(Dropout)
def _dropout_grad(op, grad):
    x = op.inputs[0]
    return [_Fn(lambda g: (g * op.last_mask).astype(g.dtype, copy=False), (grad,), x.shape,
                grad.dtype, "DropoutGrad"), None]


def dropout(x, keep_prob=None, noise_shape=None, seed=None, name=None, rate=None):
    """TF1's nn.dropout (keep_prob, a float or a fed tensor) or TF2's (rate)."""
    if (keep_prob is None) == (rate is None):
        raise ValueError("dropout: give keep_prob or rate (one of them)")
    if rate is None:
        rate = 1.0 - convert_to_tensor(keep_prob, dtype=float32) if isinstance(
            keep_prob, Node) else 1.0 - float(keep_prob)
    return Dropout(x, rate, noise_shape, seed, name)


def xw_plus_b(x, weights, biases, name=None):
    return add(matmul(x, weights), biases, name=name)


def moments(x, axes, shift=None, name=None, keep_dims=None, keepdims=False):
    """(mean, variance) over `axes`."""
    keep = bool(keepdims if keep_dims is None else keep_dims)
    mean = reduce_mean(x, axis=axes, keepdims=True)
    variance = reduce_mean(square(x - mean), axis=axes, keepdims=keep)
    return (mean if keep else reduce_sum(mean, axis=axes)), variance


class _Clip(_Unary):
    def __init__(self, x, low, high, name=None):
        self.low, self.high = float(low), float(high)
        if self.low > self.high:
            raise ValueError(f"clip_by_value: clip_value_min {low} is above clip_value_max "
                             f"{high}")
        super().__init__(x, name=name or "clip_by_value")

    def forward(self, x):
        return np.clip(x, self.low, self.high)


@register_gradient(_Clip)
def _clip_grad(op, grad):
    x = op.inputs[0]
    return [_Fn(lambda v, g: g * ((v >= op.low) & (v <= op.high)), (x, grad), x.shape,
                grad.dtype, "ClipGrad")]


def clip_by_value(t, clip_value_min, clip_value_max, name=None):
    return _Clip(t, clip_value_min, clip_value_max, name)


def global_norm(t_list, name=None):
    return sqrt(add_all([reduce_sum(square(t)) for t in t_list if t is not None]),
                name=name)


def add_all(nodes):
    total = nodes[0]
    for node in nodes[1:]:
        total = total + node
    return total


def clip_by_global_norm(t_list, clip_norm, use_norm=None, name=None):
    """(the tensors scaled by clip_norm / max(global norm, clip_norm), the global norm)."""
    t_list = list(t_list)
    norm = use_norm if use_norm is not None else global_norm(t_list)
    scale = clip_norm / maximum(norm, clip_norm)
    return [None if t is None else t * scale for t in t_list], norm


__all__ = ["abs", "clip_by_global_norm", "clip_by_value", "dropout", "elu", "expand_dims",
           "floor", "global_norm", "greater", "greater_equal", "leaky_relu", "less",
           "less_equal", "logical_and", "logical_not", "logical_or", "logical_xor", "maximum",
           "minimum", "moments", "not_equal", "pow", "reduce_max", "reduce_min", "reduce_prod",
           "round", "sign", "squeeze", "stack", "tile", "unstack", "where", "xw_plus_b"]
