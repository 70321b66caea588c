"""Reductions over axes: reduce_sum, reduce_mean, reduce_max, reduce_min, reduce_prod and
argmax; each op's gradient sits right below it."""

import numpy as np

from .dtypes import as_dtype
from .elementwise import NumpyFn
from .gradient_registry import register_gradient
from .graph import Node, convert_to_tensor


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
    return [NumpyFn(spread, (x, op, grad), x.shape, grad.dtype, f"{type(op).__name__}Grad")]


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
    return [NumpyFn(others, (x, grad), x.shape, grad.dtype, "ProdGrad")]


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


# Public functions, TF1 names.

def reduction_args(axis, keepdims, reduction_indices, keep_dims):
    """TF1's old names (reduction_indices, keep_dims) beside the new (axis, keepdims)."""
    if reduction_indices is not None:
        if axis is not None:
            raise ValueError("give axis or reduction_indices, not both")
        axis = reduction_indices
    if keep_dims is not None:
        keepdims = keep_dims
    return axis, keepdims


def _reduction(op, tf_name):
    """The public function of reduction `op` with TF1's arguments (see reduction_args)."""

    def reduce(x, axis=None, keepdims=False, name=None, reduction_indices=None,
               keep_dims=None):
        axis, keepdims = reduction_args(axis, keepdims, reduction_indices, keep_dims)
        return op(x, axis=axis, keepdims=keepdims, name=name)

    reduce.__name__ = reduce.__qualname__ = tf_name
    reduce.__doc__ = f"`tf.{tf_name}` of `x` over `axis` (all axes when None)."
    return reduce


reduce_sum = _reduction(ReduceSum, "reduce_sum")
reduce_mean = _reduction(ReduceMean, "reduce_mean")
reduce_max = _reduction(ReduceMax, "reduce_max")
reduce_min = _reduction(ReduceMin, "reduce_min")
reduce_prod = _reduction(ReduceProd, "reduce_prod")


def argmax(x, axis=None, output_type=np.int64, name=None):
    """Index of the maximum along `axis` (TF1's default axis is 0)."""
    return Argmax(x, 0 if axis is None else axis, output_type=output_type, name=name)
