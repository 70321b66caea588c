"""`IndexedSlices`: the sparse gradient value. The gradient of a lookup, an update rule's input
for a row subset and the rows a worker pushes to a parameter server all take this form."""

import numpy as np


class IndexedSlices:
    """A sparse gradient: `values[i]` is the gradient of row `indices[i]` of a tensor of
    `dense_shape` (rows may repeat; they add up). Gradients of `gather` have this form, so an
    embedding update touches only the looked-up rows."""

    __slots__ = ("values", "indices", "dense_shape")

    def __init__(self, values, indices, dense_shape):
        self.values = values
        self.indices = indices
        self.dense_shape = tuple(dense_shape)

    def to_dense(self):
        dense = np.zeros(self.dense_shape, dtype=self.values.dtype)
        np.add.at(dense, self.indices, self.values)
        return dense

    def __repr__(self):
        return f"IndexedSlices(rows={len(self.indices)}, dense_shape={self.dense_shape})"
