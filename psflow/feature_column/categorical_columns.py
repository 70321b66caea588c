"""Categorical columns: a feature's values as ids. Hashed into buckets (combinehash), looked
up in a vocabulary list or file (pickcat), taken as ids, hashed as table keys for a dynamic
embedding table, crossed with other categorical features (descartes), or weighted by another
feature. Each gives `sparse_ids(builder)`: SparseIds of the batch."""

import numpy as np

from ..categorical_ops import (
    DEFAULT_HASH_KEY,
    CrossIndices,
    CrossValues,
    IdentityIds,
    VocabularyLookup,
)
from ..dtypes import as_dtype, float32, string
from ..math_ops import cast
from ..string_ops import AsString, KeyFingerprint, StringToHashBucketFast, check_buckets
from .column_inputs import SparseIds
from .vocabulary_files import read_vocabulary


def _check_key(function, key):
    if not isinstance(key, str) or not key:
        raise ValueError(f"{function}: key must be a non-empty string, got {key!r}")


def _check_dtype(function, key, dtype):
    dtype = as_dtype(dtype)
    if dtype.kind not in "SUiu":
        raise ValueError(f"{function}({key!r}): dtype must be string or an integer type, got "
                         f"{dtype.name}")
    return string if dtype.kind in "SU" else dtype


class CategoricalColumn:
    """What every categorical column has: a feature key, a dtype, its number of buckets."""

    is_dense = False
    is_categorical = True
    ids_are_keys = False  # True: ids are keys of a hash-keyed table, any int64
    # Columns with equal (not None) `transform_key`s make ids with the same transform of
    # their raw values, so a shared embedding transforms their values in one call.
    transform_key = None

    @property
    def name(self):
        return self.key

    def values(self, builder):
        """The feature's raw entries, checked against the column's dtype."""
        raw = builder.sparse_input(self.key)
        dtype = raw.values.dtype
        if dtype is not None and (dtype.kind in "SUO") != (self.dtype.kind == "S"):
            raise ValueError(f"{type(self).__name__}({self.key!r}) has dtype "
                             f"{self.dtype.name if self.dtype.kind != 'S' else 'string'}; "
                             f"feature {self.key!r} is {dtype.name}")
        return raw

    def sparse_ids(self, builder):
        def make(builder):
            raw = self.values(builder)
            return raw._replace(values=self.transform(raw.values))
        return builder.get(self, "ids", make)


class HashedColumn(CategoricalColumn):
    def __init__(self, key, hash_bucket_size, dtype):
        self.key, self.num_buckets, self.dtype = key, hash_bucket_size, dtype
        self.transform_key = ("hash", hash_bucket_size, dtype.str)

    def transform(self, values):
        strings = values if self.dtype.kind == "S" else AsString(values)
        return StringToHashBucketFast(strings, self.num_buckets)


def categorical_column_with_hash_bucket(key, hash_bucket_size, dtype=string):
    """TF1's categorical_column_with_hash_bucket: each value's bucket,
    Fingerprint64(value) % hash_bucket_size (an integer hashed as its decimal string, as
    TensorFlow does)."""
    _check_key("categorical_column_with_hash_bucket", key)
    size = check_buckets(f"categorical_column_with_hash_bucket({key!r}): hash_bucket_size",
                         hash_bucket_size)
    if size < 2:
        raise ValueError(f"categorical_column_with_hash_bucket({key!r}): hash_bucket_size "
                         f"must be at least 2, got {size}")
    return HashedColumn(key, size, _check_dtype("categorical_column_with_hash_bucket", key,
                                                dtype))


class VocabularyColumn(CategoricalColumn):
    def __init__(self, key, vocabulary, dtype, default_value, num_oov_buckets):
        self.key, self.vocabulary, self.dtype = key, vocabulary, dtype
        self.default_value, self.num_oov_buckets = default_value, num_oov_buckets
        self.num_buckets = len(vocabulary) + num_oov_buckets

    def transform(self, values):
        return VocabularyLookup(values, np.asarray(self.vocabulary), self.num_oov_buckets,
                                self.default_value, name="VocabularyLookup")


def _vocabulary_column(function, key, vocabulary, dtype, default_value, num_oov_buckets):
    _check_key(function, key)
    if int(num_oov_buckets) < 0:
        raise ValueError(f"{function}({key!r}): num_oov_buckets must be >= 0, got "
                         f"{num_oov_buckets}")
    if num_oov_buckets and default_value not in (None, -1):
        raise ValueError(f"{function}({key!r}): give num_oov_buckets or default_value, not "
                         "both")
    if not len(vocabulary):
        raise ValueError(f"{function}({key!r}): the vocabulary is empty")
    if dtype is None:
        dtype = string if isinstance(vocabulary[0], (str, bytes)) else np.dtype(np.int64)
    dtype = _check_dtype(function, key, dtype)
    if dtype.kind == "S":
        if not all(isinstance(v, (str, bytes)) for v in vocabulary):
            raise ValueError(f"{function}({key!r}): a string vocabulary holds strings")
        keys = tuple(v.encode("utf-8") if isinstance(v, str) else v for v in vocabulary)
    else:
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                   for v in vocabulary):
            raise ValueError(f"{function}({key!r}): an integer vocabulary holds integers")
        keys = tuple(int(v) for v in vocabulary)
    if len(set(keys)) != len(keys):
        repeated = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"{function}({key!r}): the vocabulary repeats {repeated!r}")
    default = -1 if default_value is None else int(default_value)
    return VocabularyColumn(key, keys, dtype, default, int(num_oov_buckets))


def categorical_column_with_vocabulary_list(key, vocabulary_list, dtype=None, default_value=-1,
                                            num_oov_buckets=0):
    """TF1's categorical_column_with_vocabulary_list: a value's id is its position in
    `vocabulary_list`; one outside it gets len(vocabulary) + Fingerprint64(value) %
    num_oov_buckets, or `default_value` (-1: the value is left out) without OOV buckets."""
    return _vocabulary_column("categorical_column_with_vocabulary_list", key,
                              list(vocabulary_list), dtype, default_value, num_oov_buckets)


def categorical_column_with_vocabulary_file(key, vocabulary_file, vocabulary_size=None,
                                            num_oov_buckets=0, default_value=None,
                                            dtype=string):
    """TF1's categorical_column_with_vocabulary_file: as the list column, the vocabulary read
    from a file, one value per line (the first `vocabulary_size` lines when given). A line
    that is empty, repeats a value or (for an integer dtype) is not an integer is an error
    naming the file and the line."""
    function = "categorical_column_with_vocabulary_file"
    _check_key(function, key)
    dtype = _check_dtype(function, key, dtype)
    vocabulary = read_vocabulary(vocabulary_file, vocabulary_size, dtype, f"{function}({key!r})")
    return _vocabulary_column(function, key, vocabulary, dtype, default_value, num_oov_buckets)


class IdentityColumn(CategoricalColumn):
    def __init__(self, key, num_buckets, default_value):
        self.key, self.num_buckets, self.default_value = key, num_buckets, default_value
        self.dtype = np.dtype(np.int64)

    def transform(self, values):
        return IdentityIds(values, self.num_buckets, self.default_value, self.key)


def categorical_column_with_identity(key, num_buckets, default_value=None):
    """TF1's categorical_column_with_identity: integer values are the ids, in
    [0, num_buckets); one outside gets `default_value`, or is an error without it."""
    _check_key("categorical_column_with_identity", key)
    size = check_buckets(f"categorical_column_with_identity({key!r}): num_buckets", num_buckets)
    if default_value is not None and not 0 <= int(default_value) < size:
        raise ValueError(f"categorical_column_with_identity({key!r}): default_value "
                         f"{default_value} is outside [0, {size})")
    return IdentityColumn(key, size, None if default_value is None else int(default_value))


class EmbeddingKeyColumn(CategoricalColumn):
    """Values as keys of a hash-keyed embedding table (see categorical_column_with_embedding)."""

    ids_are_keys = True
    num_buckets = None

    def __init__(self, key, dtype, ev_option):
        self.key, self.dtype, self.ev_option = key, dtype, ev_option
        self.transform_key = ("key", dtype.str)

    def transform(self, values):
        return KeyFingerprint(values) if self.dtype.kind == "S" else cast(values, np.int64)


def categorical_column_with_embedding(key, dtype=string, partition_num=None, ev_option=None):
    """DeepRec's categorical_column_with_embedding: each value is a key of a hash-keyed
    embedding table (tf.get_embedding_variable) that embedding_column makes; a string's key
    is its Fingerprint64 as int64, an integer is its own key. No vocabulary, no buckets:
    a new value gets a row of its own the first time a training step sees it."""
    _check_key("categorical_column_with_embedding", key)
    return EmbeddingKeyColumn(key, _check_dtype("categorical_column_with_embedding", key, dtype),
                              ev_option)


class CrossedColumn(CategoricalColumn):
    dtype = np.dtype(np.int64)

    def __init__(self, keys, hash_bucket_size, hash_key):
        self.keys, self.num_buckets, self.hash_key = keys, hash_bucket_size, hash_key

    @property
    def name(self):
        return "_X_".join(sorted(k if isinstance(k, str) else k.name for k in self.keys))

    def sparse_ids(self, builder):
        def make(builder):
            parts = [builder.sparse_input(k) if isinstance(k, str) else k.sparse_ids(builder)
                     for k in self.keys]
            indices = [p.indices for p in parts]
            shape = parts[0].dense_shape
            return SparseIds(CrossIndices(indices, shape),
                             CrossValues(indices, [p.values for p in parts], shape,
                                         self.num_buckets, self.hash_key),
                             shape, None)
        return builder.get(self, "ids", make)


def crossed_column(keys, hash_bucket_size, hash_key=None):
    """TF1's crossed_column: every combination of one value of each key in an example,
    hashed into `hash_bucket_size` buckets as TensorFlow's sparse_cross_hashed does
    (FingerprintCat64 from `hash_key`, 0xDECAFCAFFE by default, over each value's
    fingerprint: Fingerprint64 of a raw string, an id or a raw integer as itself). `keys`:
    feature keys (raw strings or integers) and categorical columns (their ids)."""
    keys = tuple(keys)
    if len(keys) < 2:
        raise ValueError(f"crossed_column: keys must hold at least 2 keys or columns, got "
                         f"{len(keys)}")
    for k in keys:
        if not (isinstance(k, str) and k) and not (getattr(k, "is_categorical", False) and
                                                     not getattr(k, "ids_are_keys", False)):
            raise ValueError(f"crossed_column: each key must be a feature key or a categorical "
                             f"column with buckets, got {k!r}")
    size = check_buckets("crossed_column: hash_bucket_size", hash_bucket_size)
    return CrossedColumn(keys, size, DEFAULT_HASH_KEY if hash_key is None else int(hash_key))


class WeightedColumn(CategoricalColumn):
    def __init__(self, categorical_column, weight_feature_key, dtype):
        self.categorical_column, self.weight_feature_key = categorical_column, weight_feature_key
        self.weight_dtype = dtype
        self.num_buckets = categorical_column.num_buckets
        self.ids_are_keys = categorical_column.ids_are_keys

    @property
    def name(self):
        return f"{self.categorical_column.name}_weighted_by_{self.weight_feature_key}"

    def sparse_ids(self, builder):
        def make(builder):
            ids = self.categorical_column.sparse_ids(builder)
            weights = builder.dense_weights(self.weight_feature_key, self.categorical_column.key)
            return ids._replace(weights=cast(weights, float32))
        return builder.get(self, "ids", make)


def weighted_categorical_column(categorical_column, weight_feature_key, dtype=float32):
    """TF1's weighted_categorical_column: each id of `categorical_column` weighted by the
    value at the same place of feature `weight_feature_key` (a dense batch of the ids' shape,
    or a SparseTensor with the ids' indices)."""
    if not isinstance(categorical_column, (HashedColumn, VocabularyColumn, IdentityColumn,
                                           EmbeddingKeyColumn)):
        raise ValueError(f"weighted_categorical_column: categorical_column must be a hash, "
                         f"vocabulary, identity or embedding-key column, got "
                         f"{categorical_column!r}")
    if not isinstance(weight_feature_key, str) or not weight_feature_key:
        raise ValueError(f"weighted_categorical_column: weight_feature_key must be a "
                         f"non-empty string, got {weight_feature_key!r}")
    if as_dtype(dtype).kind != "f":
        raise ValueError(f"weighted_categorical_column: dtype must be a float type, got "
                         f"{as_dtype(dtype).name}")
    return WeightedColumn(categorical_column, weight_feature_key, as_dtype(dtype))
