"""An embedding table frozen into a servable: every key it held and its row, read by the
lookups (`gather`) of the exported graph. A key without a row reads as zeros, as a key not
yet admitted does in training."""

import numpy as np

from ..array_ops import RowSource
from ..graph import Node

_FEW = 256  # keys of a lookup searched as they come; more are sorted and deduplicated first


class TableRows:
    """Sorted keys and their rows; `read_rows` is what a lookup calls (the store side of
    array_ops.RowSource)."""

    __slots__ = ("keys", "values")

    def __init__(self, keys, values):
        keys = np.asarray(keys, dtype=np.int64)
        if keys.size > 1 and not (keys[1:] > keys[:-1]).all():  # an export writes them sorted
            order = np.argsort(keys, kind="stable")
            keys, values = keys[order], values[order]
        self.keys = np.ascontiguousarray(keys)
        self.values = np.ascontiguousarray(values)
        self.keys.setflags(write=False)
        self.values.setflags(write=False)

    def read_rows(self, var, indices, train=False):
        indices = np.asarray(indices)
        flat = indices.astype(np.int64, copy=False).reshape(-1)
        keys, values = self.keys, self.values
        if not keys.size or not flat.size:
            out = np.zeros((flat.size, values.shape[1]), dtype=values.dtype)
        else:
            if flat.size > _FEW:  # search each distinct key once, in order: cache-friendly
                flat, inverse = np.unique(flat, return_inverse=True)
            at = keys.searchsorted(flat)
            np.minimum(at, keys.size - 1, out=at)
            out = values.take(at, axis=0)
            missing = keys.take(at) != flat
            if missing.any():
                out[missing] = 0
            if flat.size != indices.size:
                out = out.take(inverse.reshape(-1), axis=0)
        return out.reshape(indices.shape + (values.shape[1],))


class FrozenTable(Node):
    """Stands where an EmbeddingVariable stood: its value is a RowSource over `rows` (a
    TableRows), so `gather` reads rows by key."""

    is_table = True  # what RowSource asks: indices are keys

    def __init__(self, rows, name, dtype, graph=None):
        self.rows = rows
        super().__init__(shape=(None, rows.values.shape[1]), dtype=np.dtype(dtype),
                         graph=graph, unique_name=name)

    def forward(self):
        return RowSource(self, self.rows, False)
