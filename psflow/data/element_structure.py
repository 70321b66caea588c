"""The structure of a dataset's elements: a tensor, or tuples and dicts of them (TF's nest,
with dict keys in sorted order), and each component's dtype and static shape.

Inside the pipeline an element travels flat, as a tuple of numpy arrays in the order
`flatten` gives; `pack` rebuilds the user's structure from it.
"""

import numpy as np

from ..graph import Node

LEAF = None  # the structure of a single component


def structure_of(value):
    """The nest of `value` with every component replaced by LEAF. Tuples and dicts are
    structure; anything else (arrays, lists, tensors) is one component, as in tf.data."""
    if isinstance(value, tuple):
        return tuple(structure_of(v) for v in value)
    if isinstance(value, dict):
        return {k: structure_of(value[k]) for k in sorted(value)}
    return LEAF


def flatten(value):
    """The components of `value`, in the order of its structure."""
    if isinstance(value, tuple):
        return [c for v in value for c in flatten(v)]
    if isinstance(value, dict):
        return [c for k in sorted(value) for c in flatten(value[k])]
    return [value]


def pack(structure, flat):
    """The inverse of flatten: `flat`'s components in `structure`."""
    items = iter(flat)
    value = _pack(structure, items)
    return value


def _pack(structure, items):
    if isinstance(structure, tuple):
        return tuple(_pack(s, items) for s in structure)
    if isinstance(structure, dict):
        return {k: _pack(s, items) for k, s in structure.items()}
    return next(items)


class Spec:
    """A component's dtype (a numpy dtype; `S` unsized for strings) and static shape (a
    tuple with None for unknown dimensions, or None when even the rank is unknown)."""

    __slots__ = ("dtype", "shape")

    def __init__(self, dtype, shape):
        self.dtype = np.dtype("S") if np.dtype(dtype).kind == "S" else np.dtype(dtype)
        self.shape = None if shape is None else tuple(shape)

    def batched(self, size):
        return Spec(self.dtype, None if self.shape is None else (size,) + self.shape)

    def __repr__(self):
        return f"Spec({self.dtype.name}, {self.shape})"


def spec_of_node(node):
    shape = None if node.shape is None else tuple(node.shape)
    return Spec(node.dtype, shape)


def as_component(value, what):
    """A component given to a dataset as a numpy array (strings as `S` bytes) or a node."""
    if isinstance(value, Node):
        return value
    array = np.asarray(value)
    if array.dtype.kind == "U":
        array = np.char.encode(array, "utf-8")
    if array.dtype.kind == "O":
        raise TypeError(f"{what}: cannot make a tensor of {type(value).__name__} values; give "
                        "numbers, byte strings or str")
    if array.dtype == np.float64 and not isinstance(value, np.ndarray):
        array = array.astype(np.float32)  # TF's rule: Python floats become float32
    elif array.dtype == np.int64 and not isinstance(value, np.ndarray):
        array = array.astype(np.int32)
    return array
