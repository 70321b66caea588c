"""`numeric_column` and `bucketized_column`: a number feature as it is (normalized if asked),
or as the bucket it falls in among sorted boundaries (piecewise)."""

import numpy as np

from ..categorical_ops import Bucketize, DenseIndices, DenseShape
from ..dtypes import as_dtype, float32
from ..math_ops import add, cast
from ..shape_ops import reshape
from ..sparse_ops import SparseTensor
from .column_inputs import SparseIds


class NumericColumn:
    """A dense number feature of `shape` per example (see numeric_column)."""

    is_dense = True
    is_categorical = False

    def __init__(self, key, shape, default_value, dtype, normalizer_fn):
        self.key, self.shape, self.default_value = key, shape, default_value
        self.dtype, self.normalizer_fn = dtype, normalizer_fn

    @property
    def name(self):
        return self.key

    @property
    def variable_shape(self):
        return int(np.prod(self.shape))

    def raw(self, builder):
        """The feature as (batch, *shape) of the column's dtype, normalized."""
        def make(builder):
            value = builder.feature(self.key)
            if isinstance(value, SparseTensor):
                raise ValueError(f"numeric_column({self.key!r}) takes a dense feature, got a "
                                 "SparseTensor")
            if value.dtype is not None and value.dtype.kind not in "biuf":
                raise ValueError(f"numeric_column({self.key!r}): the feature is "
                                 f"{value.dtype.name}, not numbers (decode strings first, or "
                                 "use a categorical column)")
            value = cast(value, self.dtype) if value.dtype != self.dtype else value
            value = reshape(value, (-1,) + self.shape)
            if self.normalizer_fn is not None:
                value = self.normalizer_fn(value)
            return value
        return builder.get(self, "raw", make)

    def dense_tensor(self, builder):
        """(batch, prod(shape)) float32, as input_layer concatenates it."""
        def make(builder):
            value = self.raw(builder)
            value = cast(value, float32) if value.dtype != float32 else value
            return reshape(value, (-1, self.variable_shape))
        return builder.get(self, "dense", make)


def numeric_column(key, shape=(1,), default_value=None, dtype=float32, normalizer_fn=None):
    """TF1's tf.feature_column.numeric_column: feature `key` as `shape` numbers per example,
    passed through `normalizer_fn` (a function of the tensor, in the graph: it is exported
    with the model) when given. `default_value` is checked and kept for the parsers that fill
    a missing value; a batch fed to input_layer is taken as it is."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"numeric_column: key must be a non-empty string, got {key!r}")
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(d) for d in shape)
    if not shape or any(d < 1 for d in shape):
        raise ValueError(f"numeric_column({key!r}): shape must hold positive dimensions, got "
                         f"{shape}")
    dtype = as_dtype(dtype)
    if dtype.kind not in "iuf":
        raise ValueError(f"numeric_column({key!r}): dtype must be a number type, got "
                         f"{dtype.name}")
    if default_value is not None:
        default = np.asarray(default_value, dtype=dtype)
        if default.size not in (1, int(np.prod(shape))):
            raise ValueError(f"numeric_column({key!r}): default_value {default_value!r} does "
                             f"not fit shape {shape}")
        default_value = tuple(np.broadcast_to(default, shape).reshape(-1).tolist())
    if normalizer_fn is not None and not callable(normalizer_fn):
        raise TypeError(f"numeric_column({key!r}): normalizer_fn must be callable, got "
                        f"{normalizer_fn!r}")
    return NumericColumn(key, shape, default_value, dtype, normalizer_fn)


class BucketizedColumn:
    """A numeric column's values as bucket ids (see bucketized_column)."""

    is_dense = True
    is_categorical = True
    ids_are_keys = False

    def __init__(self, source_column, boundaries):
        self.source_column, self.boundaries = source_column, boundaries

    @property
    def name(self):
        return f"{self.source_column.name}_bucketized"

    @property
    def num_buckets(self):
        return (len(self.boundaries) + 1) * self.source_column.variable_shape

    @property
    def variable_shape(self):
        return self.num_buckets

    def buckets(self, builder):
        """(batch, d) int64: the bucket of each of the source's d values, the i-th value's
        bucket offset by i * (len(boundaries) + 1) so each value has buckets of its own."""
        def make(builder):
            source = self.source_column
            values = reshape(self.source_column.raw(builder), (-1, source.variable_shape))
            ids = Bucketize(values, self.boundaries)
            if source.variable_shape == 1:
                return ids
            offsets = np.arange(source.variable_shape, dtype=np.int64) * \
                (len(self.boundaries) + 1)
            return add(ids, offsets)
        return builder.get(self, "buckets", make)

    def sparse_ids(self, builder):
        def make(builder):
            ids = self.buckets(builder)
            return SparseIds(DenseIndices(ids, None), reshape(ids, (-1,)), DenseShape(ids), None)
        return builder.get(self, "ids", make)

    def dense_tensor(self, builder):
        """The one-hot of each value's bucket, (batch, num_buckets)."""
        from .dense_columns import indicator_of
        return builder.get(self, "dense", lambda b: indicator_of(self, b))


def bucketized_column(source_column, boundaries):
    """TF1's tf.feature_column.bucketized_column: each value of a numeric_column as the bucket
    it falls in, bucket i holding boundaries[i-1] <= x < boundaries[i]. Dense in input_layer
    (one-hot), categorical for embedding_column, indicator_column and crossed_column."""
    if not isinstance(source_column, NumericColumn):
        raise ValueError(f"bucketized_column: source_column must be a numeric_column, got "
                         f"{source_column!r}")
    boundaries = tuple(float(b) for b in boundaries)
    if not boundaries or any(a >= b for a, b in zip(boundaries, boundaries[1:], strict=False)):
        raise ValueError(f"bucketized_column({source_column.name!r}): boundaries must be a "
                         f"non-empty sorted list without repeats, got {list(boundaries)}")
    return BucketizedColumn(source_column, boundaries)
