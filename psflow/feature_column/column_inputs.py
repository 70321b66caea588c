"""What every column reads: the raw features of one `input_layer` or `linear_model` call,
each column's transformation built once per call (TF1's _LazyBuilder), and a categorical
column's ids as sparse parts (`SparseIds`)."""

import collections

from ..array_ops import gather
from ..categorical_ops import DenseIndices, DenseShape, DenseValues, KeptEntries
from ..graph import Node, convert_to_tensor
from ..sparse_ops import SparseTensor

SparseIds = collections.namedtuple("SparseIds", "indices values dense_shape weights")
SparseIds.__doc__ = """A categorical column's ids for a batch: int64 `indices` (nnz, 2) of
(row, position), `values` (nnz,), `dense_shape` (batch, k) and float `weights` (nnz,) or None."""


def ignored_value(dtype):
    """What a dense batch marks as absent, as TF1: '' for strings, -1 for integers."""
    return "" if dtype is None or dtype.kind in "SUO" else -1


class Builder:
    """The features of one call and the columns' outputs made from them, each made once."""

    def __init__(self, features):
        if not isinstance(features, dict):
            raise TypeError(f"features must be a dict {{key: tensor}}, got "
                            f"{type(features).__name__}")
        self.features = features
        self.made = {}

    def feature(self, key):
        """features[key] as a graph tensor or a SparseTensor; KeyError naming the key."""
        if key not in self.features:
            raise KeyError(f"feature {key!r} is not in features (they have: "
                           f"{', '.join(map(repr, sorted(map(str, self.features))))})")
        value = self.features[key]
        return value if isinstance(value, (SparseTensor, Node)) else convert_to_tensor(value)

    def get(self, column, kind, make):
        """The `kind` output of `column` (make(self) the first time)."""
        if (column, kind) not in self.made:
            self.made[column, kind] = make(self)
        return self.made[column, kind]

    def sparse_input(self, key):
        """Feature `key` as SparseIds: a SparseTensor as it is, a dense batch ((batch,) or
        (batch, k)) without its ignored values; made once per key."""
        return self.get(key, "sparse input", lambda builder: self._sparse_input(key))

    def _sparse_input(self, key):
        value = self.feature(key)
        if isinstance(value, SparseTensor):
            return SparseIds(value.indices, value.values, value.dense_shape, None)
        if value.shape is not None and len(value.shape) not in (1, 2):
            raise ValueError(f"feature {key!r}: a categorical feature is a batch of shape "
                             f"(batch,) or (batch, k), got rank {len(value.shape)}")
        ignore = ignored_value(value.dtype)
        return SparseIds(DenseIndices(value, ignore), DenseValues(value, ignore),
                         DenseShape(value), None)

    def dense_weights(self, key, ids_key):
        """Weights of feature `key` for the entries feature `ids_key` keeps: a SparseTensor's
        values, or the dense batch's values where the ids are present."""
        weights = self.feature(key)
        if isinstance(weights, SparseTensor):
            return weights.values
        ids = self.feature(ids_key)
        if isinstance(ids, SparseTensor):
            raise ValueError(f"weight feature {key!r} is dense while its ids {ids_key!r} are "
                             "a SparseTensor; give both as SparseTensors with the same indices")
        return DenseValues(weights, ignored_value(ids.dtype), like=ids)


def pruned(ids, keys=False):
    """`ids` without entries whose id is negative (unless the ids are table keys, which may
    be) or whose weight is not positive, as TF1's safe_embedding_lookup_sparse."""
    if keys and ids.weights is None:
        return ids
    keep = KeptEntries(ids.values, ids.weights, keys=keys)
    return SparseIds(gather(ids.indices, keep), gather(ids.values, keep), ids.dense_shape,
                     None if ids.weights is None else gather(ids.weights, keep))
