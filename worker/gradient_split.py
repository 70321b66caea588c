"""A variable's gradient split by the parts of it that each shard holds."""

import numpy as np

from psflow.errors import InvalidArgumentError
from psflow.indexed_slices import IndexedSlices


def split_gradient(grad, var, placement, dedup):
    """Yields (part, values, indices or None) for each part of `var` the gradient touches.
    A sparse gradient travels as one row per distinct id, its rows summed (`dedup(ids)`
    gives the ids' Dedup)."""
    parts = placement.parts_of(var)
    if isinstance(grad, IndexedSlices):
        ids = np.asarray(grad.indices)
        found = dedup(ids)
        values = np.asarray(grad.values).reshape((ids.size,) + tuple(var.shape[1:]))
        indices, values = found.unique, found.sum_rows(values)
        if len(parts) == 1:
            yield parts[0], values, indices
            return
        # the distinct ids are sorted: each part's are one slice
        bounds = np.searchsorted(indices, placement.bounds[var]).tolist()
        for part, lo, hi in zip(parts, bounds[:-1], bounds[1:], strict=True):
            if hi > lo:
                yield part, values[lo:hi], indices[lo:hi] - part.start
        return
    grad = np.asarray(grad)
    if grad.shape != tuple(var.shape):
        raise InvalidArgumentError(f"gradient of shape {grad.shape} does not match variable "
                                   f"{var.name!r} of shape {tuple(var.shape)}")
    if len(parts) == 1:
        yield parts[0], grad, None
        return
    for part in parts:
        yield part, grad[part.start:part.stop], None
