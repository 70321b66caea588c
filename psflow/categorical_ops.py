"""The ops feature columns are built from: a raw batch turned into sparse ids and back into
dense numbers. Bucketize by boundaries, look a key up in a vocabulary (with out-of-vocabulary
buckets or a default id), check identity ids, cross several categorical features by hashing
(TensorFlow's `sparse_cross_hashed`), a dense batch as a sparse one without its ignored
values, entries kept by a mask, and the multi-hot (indicator) of sparse ids. Each forward is
vectorized over the batch; none has a gradient: they compute integers, or (`IndicatorDense`)
a function of integers and of raw weights that no Variable feeds."""

import numpy as np

from .dtypes import float32, int64
from .errors import InvalidArgumentError
from .fingerprint import as_bytes_array, fingerprint64, fingerprint_cat64
from .graph import Node

# TensorFlow's default hash key for crosses (sparse_ops._DEFAULT_HASH_KEY)
DEFAULT_HASH_KEY = 0xDECAFCAFFE


class Bucketize(Node):
    """The bucket of each value: i where boundaries[i-1] <= x < boundaries[i] (0 below the
    first boundary, len(boundaries) from the last one on), int64."""

    def __init__(self, x, boundaries):
        self.boundaries = np.asarray(boundaries, dtype=np.float64)
        super().__init__((x,), name="Bucketize", shape=x.shape, dtype=int64)

    def forward(self, x):
        return np.searchsorted(self.boundaries, np.asarray(x, dtype=np.float64),
                               side="right").astype(np.int64)


class VocabularyLookup(Node):
    """The position of each key in the vocabulary; a key outside it gets
    vocabulary size + Fingerprint64(key) % num_oov_buckets (an integer key hashed as its
    decimal string, as TensorFlow does) or, without OOV buckets, `default_value`."""

    def __init__(self, keys, vocabulary, num_oov_buckets, default_value, name):
        vocabulary = np.asarray(vocabulary)
        order = np.argsort(vocabulary, kind="stable")
        self.sorted_keys = vocabulary[order]
        self.sorted_ids = order.astype(np.int64)
        self.size = len(vocabulary)
        self.num_oov_buckets = int(num_oov_buckets)
        self.default_value = int(default_value)
        super().__init__((keys,), name=name, shape=keys.shape, dtype=int64)

    def forward(self, keys):
        keys = np.asarray(keys)
        if self.sorted_keys.dtype.kind == "S":
            keys = as_bytes_array(keys)
        position = np.searchsorted(self.sorted_keys, keys)
        position = np.minimum(position, max(self.size - 1, 0))
        found = self.sorted_keys[position] == keys if self.size else np.zeros(keys.shape, bool)
        ids = self.sorted_ids[position] if self.size else np.zeros(keys.shape, np.int64)
        if found.all():
            return ids
        if self.num_oov_buckets:
            missing = keys[~found]
            text = missing if missing.dtype.kind == "S" else missing.astype(np.bytes_)
            buckets = fingerprint64(text) % np.uint64(self.num_oov_buckets)
            ids[~found] = self.size + buckets.astype(np.int64)
        else:
            ids[~found] = self.default_value
        return ids


class IdentityIds(Node):
    """Integer ids checked against [0, num_buckets): one outside is replaced by
    `default_value`, or is an error naming the column when there is none."""

    def __init__(self, ids, num_buckets, default_value, column):
        self.num_buckets, self.default_value, self.column = num_buckets, default_value, column
        super().__init__((ids,), name="IdentityIds", shape=ids.shape, dtype=int64)

    def forward(self, ids):
        ids = np.asarray(ids).astype(np.int64)
        bad = (ids < 0) | (ids >= self.num_buckets)
        if not bad.any():
            return ids
        if self.default_value is None:
            raise InvalidArgumentError(
                f"categorical_column_with_identity({self.column!r}): id {ids[bad][0]} is "
                f"outside [0, {self.num_buckets}) and the column has no default_value")
        return np.where(bad, np.int64(self.default_value), ids)


def _present(x, ignore):
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    if ignore is None:
        return x, np.ones(x.shape, bool)
    if x.dtype.kind in "SUO":
        return x, as_bytes_array(x) != b""
    return x, x != ignore


class DenseIndices(Node):
    """The (row, column) of each value of a dense batch ((batch,) or (batch, k)) that is not
    the ignored value ('' for strings, -1 for integers), int64 (nnz, 2)."""

    def __init__(self, x, ignore):
        self.ignore = ignore
        super().__init__((x,), name="DenseIndices", shape=(None, 2), dtype=int64)

    def forward(self, x):
        _, present = _present(x, self.ignore)
        return np.argwhere(present).astype(np.int64)


class DenseValues(Node):
    """The values DenseIndices keeps, row by row, (nnz,); with `like`, the values of `x` where
    `like` (a batch of the same shape) is not the ignored value."""

    def __init__(self, x, ignore, like=None):
        self.ignore = ignore
        super().__init__((x,) if like is None else (x, like), name="DenseValues",
                         shape=(None,), dtype=x.dtype)

    def forward(self, x, like=None):
        x, present = _present(x, self.ignore if like is None else None)
        if like is not None:
            like, present = _present(like, self.ignore)
            if like.shape != x.shape:
                raise InvalidArgumentError(f"weights of shape {x.shape} for ids of shape "
                                           f"{like.shape}: they must have the same shape")
        return x[present]


class DenseShape(Node):
    """(batch, k) of a dense batch, int64 (a 1-D batch has k = 1)."""

    def __init__(self, x):
        super().__init__((x,), name="DenseShape", shape=(2,), dtype=int64)

    def forward(self, x):
        shape = np.shape(x)
        return np.array([shape[0], shape[1] if len(shape) > 1 else 1], dtype=np.int64)


class KeptEntries(Node):
    """Positions of the sparse entries whose id is >= 0 (any id, for table keys) and, when
    weights are given, whose weight is > 0 (TF1's safe_embedding_lookup_sparse prunes the
    others)."""

    def __init__(self, ids, weights=None, keys=False):
        self.keys = keys  # table keys: any int64 is a key
        super().__init__((ids,) if weights is None else (ids, weights), name="KeptEntries",
                         shape=(None,), dtype=int64)

    def forward(self, ids, weights=None):
        ids = np.asarray(ids)
        keep = np.ones(ids.shape, bool) if self.keys else ids >= 0
        if weights is not None:
            keep &= np.asarray(weights) > 0
        return np.flatnonzero(keep)


def _cross_entries(rows_list, batch):
    """For a cross of features whose entries lie in rows `rows_list` (each sorted): per
    output entry, the entry of each feature it combines, and its row."""
    picks = [np.arange(len(rows_list[0]))]
    rows = np.asarray(rows_list[0])
    for other in rows_list[1:]:
        counts = np.bincount(other, minlength=batch)
        starts = np.cumsum(counts) - counts
        repeats = counts[rows]
        source = np.repeat(np.arange(len(rows)), repeats)
        offsets = np.cumsum(repeats) - repeats
        within = np.arange(int(repeats.sum())) - np.repeat(offsets, repeats)
        picks = [p[source] for p in picks] + [starts[rows[source]] + within]
        rows = rows[source]
    return picks, rows


class CrossIndices(Node):
    """The (row, position) of each entry of a cross: a row has the product of its
    features' counts of entries."""

    def __init__(self, indices, dense_shape):
        super().__init__((dense_shape, *indices), name="CrossIndices", shape=(None, 2),
                         dtype=int64)

    def forward(self, dense_shape, *indices):
        batch = int(dense_shape[0])
        _, rows = _cross_entries([np.asarray(i)[:, 0] for i in indices], batch)
        counts = np.bincount(rows, minlength=batch)
        position = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        return np.stack([rows, position], axis=1).astype(np.int64)


class CrossValues(Node):
    """Each entry of a cross: hash_key chained by FingerprintCat64 with each feature's
    fingerprint (Fingerprint64 of a string; an integer as its own 64 bits), modulo
    num_buckets, as TensorFlow's sparse_cross_hashed."""

    def __init__(self, indices, values, dense_shape, num_buckets, hash_key):
        self.count = len(values)
        self.num_buckets, self.hash_key = int(num_buckets), int(hash_key)
        super().__init__((dense_shape, *indices, *values), name="CrossValues", shape=(None,),
                         dtype=int64)

    def forward(self, dense_shape, *parts):
        indices, values = parts[:self.count], parts[self.count:]
        picks, rows = _cross_entries([np.asarray(i)[:, 0] for i in indices],
                                     int(dense_shape[0]))
        hashed = np.full(len(rows), np.uint64(self.hash_key), dtype=np.uint64)
        for pick, feature in zip(picks, values, strict=True):
            feature = np.asarray(feature)
            if feature.dtype.kind in "SUO":
                prints = fingerprint64(feature)
            else:
                prints = feature.astype(np.int64).view(np.uint64)
            hashed = fingerprint_cat64(hashed, prints[pick])
        return (hashed % np.uint64(self.num_buckets)).astype(np.int64)


class IndicatorDense(Node):
    """(batch, num_buckets): how often each id occurs in each row (with weights: the sum of
    their weights); ids outside [0, num_buckets) count nowhere."""

    def __init__(self, indices, ids, dense_shape, num_buckets, weights=None):
        self.num_buckets = int(num_buckets)
        inputs = (indices, ids, dense_shape) + (() if weights is None else (weights,))
        super().__init__(inputs, name="IndicatorDense", shape=(None, self.num_buckets),
                         dtype=float32)

    def forward(self, indices, ids, dense_shape, weights=None):
        batch = int(dense_shape[0])
        ids = np.asarray(ids)
        keep = (ids >= 0) & (ids < self.num_buckets)
        flat = np.asarray(indices)[keep, 0] * self.num_buckets + ids[keep]
        amounts = None if weights is None else np.asarray(weights, np.float64)[keep]
        counts = np.bincount(flat, weights=amounts, minlength=batch * self.num_buckets)
        return counts.reshape(batch, self.num_buckets).astype(np.float32)


class FusedIndices(Node):
    """The entries of k sparse id batches of one batch size as one batch of batch * k rows:
    entry (r, p) of batch j becomes (r * k + j, p), batch after batch, so that a combine of
    all of them reshaped to (batch, k * dim) holds batch j's combination in block j."""

    def __init__(self, indices):
        self.count = len(indices)
        super().__init__(tuple(indices), name="FusedIndices", shape=(None, 2), dtype=int64)

    def forward(self, *indices):
        parts = []
        for j, part in enumerate(indices):
            part = np.array(part, dtype=np.int64).reshape(-1, 2)
            part[:, 0] = part[:, 0] * self.count + j
            parts.append(part)
        return np.concatenate(parts)


class FusedShape(Node):
    """(batch * k, 1): the dense shape FusedIndices' entries index."""

    def __init__(self, dense_shape, count):
        self.count = int(count)
        super().__init__((dense_shape,), name="FusedShape", shape=(2,), dtype=int64)

    def forward(self, dense_shape):
        return np.array([int(dense_shape[0]) * self.count, 1], dtype=np.int64)
