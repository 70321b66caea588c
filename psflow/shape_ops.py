"""Ops that change a tensor's shape but not its values: reshape, transpose, squeeze,
expand_dims and tile; gradients beside each op."""

import numpy as np

from .elementwise import NumpyFn
from .gradient_registry import register_gradient
from .graph import Node, convert_to_tensor
from .shapes import format_shape


class Reshape(Node):
    def __init__(self, x, shape, name=None):
        x = convert_to_tensor(x)
        shape = tuple(int(d) for d in shape)
        if sum(1 for d in shape if d == -1) > 1:
            raise ValueError(f"reshape to {shape}: at most one dimension may be -1")
        known = x.shape is not None and None not in x.shape
        if known:
            size = int(np.prod(x.shape))
            fixed = int(np.prod([d for d in shape if d != -1]))
            if (-1 in shape and (fixed == 0 or size % fixed)) or \
                    (-1 not in shape and fixed != size):
                raise ValueError(f"cannot reshape a tensor of shape {format_shape(x.shape)} "
                                 f"({size} elements) to {shape}")
        static = tuple(None if d == -1 else d for d in shape)
        if known and -1 in shape:
            static = tuple(size // fixed if d == -1 else d for d in shape)
        self.new_shape = shape
        super().__init__((x,), name=name, shape=static, dtype=x.dtype)

    def forward(self, x):
        return np.reshape(x, self.new_shape)


class ReshapeLike(Node):
    """Reshapes a gradient to the run-time shape of the original input."""

    def __init__(self, grad, like):
        super().__init__((grad, like), shape=like.shape, dtype=grad.dtype)

    def forward(self, grad, like):
        return np.reshape(grad, np.shape(like))


@register_gradient(Reshape)
def _reshape_grad(op, grad):
    x = op.inputs[0]
    if x.shape is not None and None not in x.shape:
        return [Reshape(grad, x.shape)]
    return [ReshapeLike(grad, x)]


class Transpose(Node):
    def __init__(self, x, perm=None, name=None):
        x = convert_to_tensor(x)
        if perm is None and x.shape is not None:
            perm = tuple(reversed(range(len(x.shape))))
        self.perm = None if perm is None else tuple(int(p) for p in perm)
        shape = None
        if x.shape is not None:
            if sorted(self.perm) != list(range(len(x.shape))):
                raise ValueError(f"transpose: {self.perm} is not a permutation of the axes of "
                                 f"a tensor of shape {format_shape(x.shape)}")
            shape = tuple(x.shape[p] for p in self.perm)
        super().__init__((x,), name=name, shape=shape, dtype=x.dtype)

    def forward(self, x):
        return np.transpose(x, self.perm)


@register_gradient(Transpose)
def _transpose_grad(op, grad):
    if op.perm is None:
        return [Transpose(grad)]
    return [Transpose(grad, tuple(np.argsort(op.perm)))]


class Reshaped(Node):
    """squeeze / expand_dims / tile (`kind`) with its plain argument `arg` (the axes, the
    axis, the multiples), so that the op is data a servable can store."""

    def __init__(self, x, kind, arg, shape, name):
        self.kind, self.arg = kind, arg
        x = convert_to_tensor(x)
        super().__init__((x,), name=name, shape=shape, dtype=x.dtype)

    def forward(self, x):
        if self.kind == "squeeze":
            return np.squeeze(x, axis=self.arg)
        if self.kind == "expand_dims":
            return np.expand_dims(x, self.arg)
        return np.tile(x, self.arg)

    def undo(self, g, x):
        """The gradient for the input: summed over the tiles, or reshaped back."""
        if self.kind != "tile":
            return np.reshape(g, np.shape(x))
        split = []
        for m, d in zip(self.arg, np.shape(x), strict=False):
            split += [m, d]
        return np.reshape(g, split).sum(axis=tuple(range(0, 2 * len(self.arg), 2)))


@register_gradient(Reshaped)
def _reshaped_grad(op, grad):
    x = op.inputs[0]
    return [NumpyFn(op.undo, (grad, x), x.shape, grad.dtype, f"{op.name}Grad")]


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
    return Reshaped(x, "squeeze", axes, shape, name or "Squeeze")


def expand_dims(x, axis, name=None, dim=None):
    x = convert_to_tensor(x)
    axis = dim if dim is not None else axis
    shape = None
    if x.shape is not None:
        rank = len(x.shape) + 1
        at = axis if axis >= 0 else axis + rank
        shape = tuple(x.shape[:at]) + (1,) + tuple(x.shape[at:])
    return Reshaped(x, "expand_dims", int(axis), shape, name or "ExpandDims")


def tile(x, multiples, name=None):
    x = convert_to_tensor(x)
    multiples = tuple(int(m) for m in multiples)
    shape = None if x.shape is None else tuple(
        None if d is None else d * m for d, m in zip(x.shape, multiples, strict=False))
    return Reshaped(x, "tile", multiples, shape, name or "Tile")


def reshape(x, shape, name=None):
    return Reshape(x, shape, name=name)


def transpose(x, perm=None, name=None):
    return Transpose(x, perm, name=name)
