"""`shared_embedding_columns`: several categorical columns reading one table, as TF1's. The
same id of any of them reads the same row. `input_layer` looks up a run of them (adjacent in
the order of the columns' names) as one lookup: their ids are transformed in one call where
their transforms are the same (one hash of all the fields' strings), pulled and combined once,
and come out as one (batch, k * dimension) block, so k fields cost one lookup, one combine and
one gradient per step, not k."""

import math

from ..array_ops import concat
from ..categorical_ops import FusedIndices, FusedShape
from ..dtypes import float32
from ..initializers import truncated_normal_initializer, variable_scope
from ..math_ops import cast, ones_like
from ..shape_ops import reshape
from ..sparse_ops import COMBINERS
from .column_inputs import SparseIds, pruned
from .dense_columns import combined, table_of


class SharedEmbeddingColumn:
    is_dense = True
    is_categorical = False

    def __init__(self, categorical_column, group):
        self.categorical_column, self.shared_group = categorical_column, group

    @property
    def name(self):
        return f"{self.categorical_column.name}_shared_embedding"

    @property
    def variable_shape(self):
        return self.shared_group.dimension

    def dense_tensor(self, builder):
        return self.shared_group.dense_tensor(builder, (self,))


class SharedGroup:
    """The table and settings the columns of one shared_embedding_columns call share."""

    def __init__(self, name, dimension, combiner, initializer, trainable):
        self.name, self.dimension, self.combiner = name, dimension, combiner
        self.initializer, self.trainable = initializer, trainable

    def dense_tensor(self, builder, members):
        """(batch, len(members) * dimension): each member's combination, in order."""
        members = tuple(members)

        def make(builder):
            first = members[0].categorical_column
            with variable_scope(self.name):
                table = table_of("embedding_weights", first, self.dimension,
                                 self.initializer, self.trainable)
            if len(members) == 1:
                return combined(table, pruned(first.sparse_ids(builder),
                                              keys=first.ids_are_keys), self.combiner)
            rows = combined(table, fused_ids(builder, [m.categorical_column for m in members]),
                            self.combiner)
            return reshape(rows, (-1, len(members) * self.dimension))
        return builder.get(self, ("dense", members), make)


def fused_ids(builder, columns):
    """The ids of `columns` as one sparse batch of batch * k rows (see FusedIndices). Columns
    of one transform have their raw values transformed at once; their ids need no pruning (a
    hash bucket is never negative, a key is any integer)."""
    key = columns[0].transform_key
    same = key is not None and all(c.transform_key == key for c in columns)
    if same:
        parts = [c.values(builder) for c in columns]
        values = columns[0].transform(concat([p.values for p in parts], axis=0))
    else:
        parts = [pruned(c.sparse_ids(builder), keys=c.ids_are_keys) for c in columns]
        values = concat([p.values for p in parts], axis=0)
    weights = None
    if not same and any(p.weights is not None for p in parts):
        weights = concat([cast(ones_like(p.values), float32) if p.weights is None
                          else p.weights for p in parts], axis=0)
    return SparseIds(FusedIndices([p.indices for p in parts]), values,
                     FusedShape(parts[0].dense_shape, len(columns)), weights)


def shared_embedding_columns(categorical_columns, dimension, combiner="mean", initializer=None,
                             shared_embedding_collection_name=None, ckpt_to_load_from=None,
                             tensor_name_in_ckpt=None, max_norm=None, trainable=True):
    """TF1's shared_embedding_columns: one embedding column per categorical column, all
    reading one table `<shared_embedding_collection_name>/embedding_weights` (by default the
    columns' sorted names joined by '_', then '_shared_embedding'): a Variable of num_buckets
    rows (every column must have the same number), or a hash-keyed embedding table when the
    columns are categorical_column_with_embedding. The same id of two of the columns reads
    the same row. `combiner` and `initializer` as embedding_column's."""
    columns = list(categorical_columns) if isinstance(categorical_columns, (list, tuple)) \
        else None
    if not columns:
        raise ValueError("shared_embedding_columns: categorical_columns must be a non-empty "
                         f"list of categorical columns, got {categorical_columns!r}")
    for column in columns:
        if not getattr(column, "is_categorical", False):
            raise ValueError(f"shared_embedding_columns: {column!r} is not a categorical column")
    kinds = {bool(c.ids_are_keys) for c in columns}
    if len(kinds) > 1:
        raise ValueError("shared_embedding_columns: the columns must all be "
                         "categorical_column_with_embedding (a hash-keyed table) or all have "
                         "buckets (a Variable), not a mix")
    sizes = {c.num_buckets for c in columns}
    if len(sizes) > 1:
        raise ValueError(f"shared_embedding_columns: the columns must have the same number of "
                         f"buckets to share a table, got "
                         f"{', '.join(f'{c.name}: {c.num_buckets}' for c in columns)}")
    names = [c.name for c in columns]
    if len(set(names)) < len(names):
        raise ValueError(f"shared_embedding_columns: a column is given twice ({names})")
    if isinstance(dimension, bool) or not isinstance(dimension, int) or dimension < 1:
        raise ValueError(f"shared_embedding_columns: dimension must be a positive integer, got "
                         f"{dimension!r}")
    if combiner not in COMBINERS:
        raise ValueError(f"shared_embedding_columns: combiner must be one of "
                         f"{', '.join(COMBINERS)}, got {combiner!r}")
    if ckpt_to_load_from is not None or tensor_name_in_ckpt is not None or max_norm is not None:
        raise NotImplementedError("shared_embedding_columns: ckpt_to_load_from, "
                                  "tensor_name_in_ckpt and max_norm are not supported")
    name = shared_embedding_collection_name or "_".join(sorted(names)) + "_shared_embedding"
    if initializer is None:
        initializer = truncated_normal_initializer(stddev=1.0 / math.sqrt(dimension))
    group = SharedGroup(name, dimension, combiner, initializer, trainable)
    return [SharedEmbeddingColumn(column, group) for column in columns]
