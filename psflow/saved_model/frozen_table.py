"""An embedding table frozen into a servable: every key it held and its row, read by the
lookups (`gather`) of the exported graph. A key without a row reads as zeros, as a key not
yet admitted does in training."""

import numpy as np

from ..array_ops import RowSource
from ..graph import Node


class TableRows:
    """Sorted keys and their rows; `read_rows` is what a lookup calls (the store side of
    array_ops.RowSource)."""

    __slots__ = ("keys", "values")

    def __init__(self, keys, values):
        order = np.argsort(keys, kind="stable")
        self.keys = np.ascontiguousarray(keys[order], dtype=np.int64)
        self.values = np.ascontiguousarray(values[order])
        self.keys.setflags(write=False)
        self.values.setflags(write=False)

    def read_rows(self, var, indices, train=False):
        flat = np.asarray(indices).astype(np.int64, copy=False).reshape(-1)
        dim = self.values.shape[1]
        out = np.zeros((flat.size, dim), dtype=self.values.dtype)
        if self.keys.size and flat.size:
            at = np.minimum(np.searchsorted(self.keys, flat), self.keys.size - 1)
            found = self.keys[at] == flat
            out[found] = self.values[at[found]]
        return out.reshape(np.shape(indices) + (dim,))


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
