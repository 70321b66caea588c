"""Concatenation, stacking, indexing, slicing and splitting, gather (the embedding lookup),
one_hot and filled tensors; gradients beside each op. Reshaping ops are in shape_ops."""

import numpy as np

from .dtypes import as_dtype
from .elementwise import NumpyFn
from .gradient_registry import register_gradient
from .graph import Constant, Node, convert_to_tensor
from .indexed_slices import IndexedSlices
from .shapes import as_shape, format_shape
from .variables import Variable

_builtin_slice = slice


class Concat(Node):
    def __init__(self, values, axis, name=None):
        values = [convert_to_tensor(v) for v in values]
        if not values:
            raise ValueError("concat needs at least one tensor")
        self.axis = int(axis)
        shape = None
        if all(v.shape is not None for v in values):
            ranks = {len(v.shape) for v in values}
            if len(ranks) != 1:
                raise ValueError("concat: tensors have different ranks: " +
                                 ", ".join(format_shape(v.shape) for v in values))
            rank = ranks.pop()
            if not -rank <= self.axis < rank:
                raise ValueError(f"concat: axis {self.axis} out of range for rank {rank}")
            ax = self.axis % rank
            dims = [v.shape[ax] for v in values]
            total = None if None in dims else sum(dims)
            shape = values[0].shape[:ax] + (total,) + values[0].shape[ax + 1:]
        super().__init__(values, name=name, shape=shape, dtype=values[0].dtype)

    def forward(self, *values):
        return np.concatenate(values, axis=self.axis)


class ConcatGrad(Node):
    """The slice of a concat's gradient that belongs to input `index`."""

    def __init__(self, grad, inputs, index, axis):
        self.index, self.axis = index, axis
        super().__init__((grad,) + tuple(inputs), shape=inputs[index].shape,
                         dtype=grad.dtype)

    def forward(self, grad, *values):
        axis = self.axis % grad.ndim
        start = sum(v.shape[axis] for v in values[:self.index])
        stop = start + values[self.index].shape[axis]
        key = (_builtin_slice(None),) * axis + (_builtin_slice(start, stop),)
        return grad[key]


@register_gradient(Concat)
def _concat_grad(op, grad):
    return [ConcatGrad(grad, op.inputs, i, op.axis) for i in range(len(op.inputs))]


class Gather(Node):
    """Rows of `params` picked by integer `indices` (an embedding lookup)."""

    def __init__(self, params, indices, name=None):
        params, indices = convert_to_tensor(params), convert_to_tensor(indices)
        if indices.dtype is not None and indices.dtype.kind not in "iu":
            raise TypeError(f"gather: indices must be integers, {indices.name!r} is "
                            f"{indices.dtype.name}")
        shape = None
        if params.shape is not None and indices.shape is not None:
            shape = indices.shape + params.shape[1:]
        super().__init__((params, indices), name=name, shape=shape, dtype=params.dtype)

    def forward(self, params, indices):
        if isinstance(params, RowSource):  # a variable read only through lookups
            return params.rows(indices)
        return np.take(params, indices, axis=0)


class RowSource:
    """Stands for a Variable that a run reads only through `gather`: the lookup asks the
    session's store for the rows it needs (`store.read_rows`), so a distributed session
    pulls those rows, never the whole table."""

    __slots__ = ("var", "store", "train")

    def __init__(self, var, store, train=False):
        self.var, self.store, self.train = var, store, train

    def rows(self, indices):
        if self.var.is_table:  # keys: a training run creates their rows
            return self.store.read_rows(self.var, np.asarray(indices), train=self.train)
        return self.store.read_rows(self.var, np.asarray(indices))


class GatherGrad(Node):
    """The gradient of `gather` for `params`: only the looked-up rows, as IndexedSlices.
    It needs the value of `params` only when its shape is not known statically."""

    is_sparse = True

    def __init__(self, grad, params, indices):
        self.dense_shape = params.shape if params.shape is not None and \
            None not in params.shape else None
        # `params` may be any tensor; only a Variable can be a table (rows by key: no count)
        if isinstance(params, Variable) and params.is_table:
            self.dense_shape = (-1,) + tuple(params.shape[1:])
        inputs = (grad, indices) if self.dense_shape is not None else (grad, indices, params)
        super().__init__(inputs, shape=params.shape, dtype=grad.dtype)

    def forward(self, grad, indices, params=None):
        shape = self.dense_shape if params is None else np.shape(params)
        indices = np.asarray(indices).reshape(-1)
        values = np.reshape(grad, (indices.size,) + tuple(shape[1:]))
        return IndexedSlices(values, indices, tuple(shape))


@register_gradient(Gather)
def _gather_grad(op, grad):
    params, indices = op.inputs
    return [GatherGrad(grad, params, indices), None]


class GetItem(Node):
    """`x[key]` for a static key of ints, slices, Ellipsis and None (numpy basic indexing)."""

    def __init__(self, x, key):
        x = convert_to_tensor(x)
        key = key if isinstance(key, tuple) else (key,)
        for k in key:
            if not (k is None or k is Ellipsis or isinstance(k, (int, np.integer, _builtin_slice))):
                raise TypeError(f"indexing {x.name!r}: only ints, slices, ... and None are "
                                f"supported, got {k!r}; use gather() to pick rows by a tensor")
        self.key = key
        shape = None
        if x.shape is not None and None not in x.shape:
            shape = np.empty(x.shape, dtype=np.bool_)[key].shape
        elif x.shape is not None:
            shape = _indexed_shape(x.shape, key)
        super().__init__((x,), name="strided_slice", shape=shape, dtype=x.dtype)

    def forward(self, x):
        return x[self.key]


def _indexed_shape(shape, key):
    """The static shape of shape[key] where some dimensions are unknown (None): those stay
    unknown unless the key takes them whole; the known ones are computed."""
    real = sum(1 for k in key if k is not None and k is not Ellipsis)
    if Ellipsis in key:
        at = key.index(Ellipsis)
        key = key[:at] + (_builtin_slice(None),) * (len(shape) - real) + key[at + 1:]
    if real > len(shape):
        return None  # numpy will say what is wrong when the op runs
    out, dim = [], 0
    for k in key:
        if k is None:
            out.append(1)
            continue
        size = shape[dim]
        dim += 1
        if not isinstance(k, _builtin_slice):
            continue  # an int drops the dimension
        if size is not None:
            out.append(len(range(*k.indices(size))))
        else:
            out.append(None)
    return tuple(out) + tuple(shape[dim:])


class GetItemGrad(Node):
    def __init__(self, grad, x, key):
        self.key = key
        super().__init__((grad, x), shape=x.shape, dtype=grad.dtype)

    def forward(self, grad, x):
        out = np.zeros(x.shape, dtype=grad.dtype)
        out[self.key] = grad  # basic indexing never selects an element twice
        return out


@register_gradient(GetItem)
def _getitem_grad(op, grad):
    return [GetItemGrad(grad, op.inputs[0], op.key)]


class OneHot(Node):
    def __init__(self, indices, depth, on_value=1.0, off_value=0.0, dtype=np.float32,
                 name=None):
        indices = convert_to_tensor(indices)
        self.depth = int(depth)
        self.on_value, self.off_value = on_value, off_value
        shape = None if indices.shape is None else indices.shape + (self.depth,)
        super().__init__((indices,), name=name, shape=shape, dtype=as_dtype(dtype))

    def forward(self, indices):
        hot = np.asarray(indices)[..., None] == np.arange(self.depth)
        return np.where(hot, self.on_value, self.off_value).astype(self.dtype)


def concat(values, axis, name=None):
    return Concat(values, axis, name=name)


def gather(params, indices, name=None):
    return Gather(params, indices, name=name)


def one_hot(indices, depth, on_value=1.0, off_value=0.0, dtype=np.float32, name=None):
    return OneHot(indices, depth, on_value, off_value, dtype, name=name)


def zeros(shape, dtype=np.float32, name=None):
    return Constant(np.zeros(as_shape(shape), dtype=as_dtype(dtype)), name=name or "zeros")


def ones(shape, dtype=np.float32, name=None):
    return Constant(np.ones(as_shape(shape), dtype=as_dtype(dtype)), name=name or "ones")


Node.__getitem__ = lambda self, key: GetItem(self, key)


def slice(input_, begin, size, name=None):  # noqa: A001 -- TF1's name
    """The part of `input_` starting at `begin` with `size` elements per dimension (-1: to the
    end); `begin` and `size` are lists of ints."""
    x = convert_to_tensor(input_)
    begin, size = [int(b) for b in begin], [int(s) for s in size]
    if len(begin) != len(size) or (x.shape is not None and len(begin) != len(x.shape)):
        raise ValueError(f"slice: begin {begin} and size {size} must have one entry per "
                         f"dimension of {x.name!r} (shape {x.shape})")
    key = tuple(_builtin_slice(b, None if s == -1 else b + s)
                for b, s in zip(begin, size, strict=True))
    return GetItem(x, key)


def split(value, num_or_size_splits, axis=0, num=None, name=None):
    """A list of parts of `value` along `axis`: `num_or_size_splits` equal ones, or one per
    size in a list (one size may be -1: the rest)."""
    x = convert_to_tensor(value)
    if x.shape is None or x.shape[axis] is None:
        raise ValueError(f"split: dimension {axis} of {x.name!r} must be known, got shape "
                         f"{x.shape}")
    total = int(x.shape[axis])
    if isinstance(num_or_size_splits, (int, np.integer)):
        count = int(num_or_size_splits)
        if count < 1 or total % count:
            raise ValueError(f"split: dimension {axis} of {x.name!r} ({total}) does not divide "
                             f"into {count} equal parts")
        sizes = [total // count] * count
    else:
        sizes = [int(s) for s in num_or_size_splits]
        if sizes.count(-1) == 1:
            sizes[sizes.index(-1)] = total - (sum(sizes) + 1)
        if sum(sizes) != total or min(sizes) < 0:
            raise ValueError(f"split: sizes {list(num_or_size_splits)} do not add up to "
                             f"dimension {axis} of {x.name!r} ({total})")
    axis = axis % len(x.shape)
    parts, start = [], 0
    for size in sizes:
        key = (_builtin_slice(None),) * axis + (_builtin_slice(start, start + size),)
        parts.append(GetItem(x, key))
        start += size
    return parts


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
    return [NumpyFn(lambda g, k=k: np.take(g, k, axis=op.axis), (grad,), v.shape, grad.dtype,
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
    rank = None if value.shape is None else len(value.shape)
    if rank is None:
        raise ValueError(f"unstack: the rank of {value.name!r} is not known")
    axis = axis if axis >= 0 else axis + rank
    return [GetItem(value, (_builtin_slice(None),) * axis + (k,)) for k in range(num)]
