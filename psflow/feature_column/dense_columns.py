"""Dense columns over categorical ones: `embedding_column` (each example's ids combined from
a trained table: a Variable of num_buckets rows, or a hash-keyed embedding table) and
`indicator_column` (the multi-hot of the ids)."""

import math

from ..categorical_ops import IndicatorDense
from ..embedding_variable import get_embedding_variable
from ..initializers import get_variable, truncated_normal_initializer, variable_scope
from ..sparse_ops import COMBINERS, SparseTensor, embedding_lookup_sparse
from .column_inputs import pruned


def indicator_of(column, builder):
    """(batch, num_buckets) float32: each id's count (or summed weight) in each example."""
    ids = column.sparse_ids(builder)
    return IndicatorDense(ids.indices, ids.values, ids.dense_shape, column.num_buckets,
                          ids.weights)


class IndicatorColumn:
    is_dense = True
    is_categorical = False

    def __init__(self, categorical_column):
        self.categorical_column = categorical_column

    @property
    def name(self):
        return f"{self.categorical_column.name}_indicator"

    @property
    def variable_shape(self):
        return self.categorical_column.num_buckets

    def dense_tensor(self, builder):
        return builder.get(self, "dense", lambda b: indicator_of(self.categorical_column, b))


def indicator_column(categorical_column):
    """TF1's indicator_column: a categorical column as a multi-hot (batch, num_buckets) row
    per example, each id counted (a weighted column: its weights summed)."""
    if not getattr(categorical_column, "is_categorical", False) or \
            getattr(categorical_column, "ids_are_keys", False):
        raise ValueError(f"indicator_column: categorical_column must be a categorical column "
                         f"with buckets, got {categorical_column!r}")
    return IndicatorColumn(categorical_column)


def table_of(name, column, dimension, initializer, trainable):
    """The table an id of `column` reads its row from, made (or, under AUTO_REUSE, found)
    in the current variable scope: a hash-keyed embedding table for key columns, else a
    Variable of num_buckets rows."""
    if column.ids_are_keys:
        from ..graph import get_default_graph
        graph = get_default_graph()
        full = "/".join(graph._name_stack + [name])
        existing = [v for v in graph.variables if v.name == full]
        if existing:
            return existing[0]
        return get_embedding_variable(name, dimension, initializer=initializer,
                                      trainable=trainable,
                                      ev_option=getattr(column, "ev_option", None))
    return get_variable(name, shape=(column.num_buckets, dimension), initializer=initializer,
                        trainable=trainable)


def combined(table, ids, combiner):
    """Each example's rows of `table` for its ids, combined: (batch, dim)."""
    sp_ids = SparseTensor(ids.indices, ids.values, ids.dense_shape)
    sp_weights = None if ids.weights is None else \
        SparseTensor(ids.indices, ids.weights, ids.dense_shape)
    return embedding_lookup_sparse(table, sp_ids, sp_weights, combiner=combiner)


class EmbeddingColumn:
    is_dense = True
    is_categorical = False

    def __init__(self, categorical_column, dimension, combiner, initializer, max_norm,
                 trainable):
        self.categorical_column, self.dimension = categorical_column, dimension
        self.combiner, self.initializer = combiner, initializer
        self.max_norm, self.trainable = max_norm, trainable

    @property
    def name(self):
        return f"{self.categorical_column.name}_embedding"

    @property
    def variable_shape(self):
        return self.dimension

    def dense_tensor(self, builder):
        def make(builder):
            column = self.categorical_column
            ids = pruned(column.sparse_ids(builder), keys=column.ids_are_keys)
            with variable_scope(self.name):
                table = table_of("embedding_weights", column, self.dimension,
                                 self.initializer, self.trainable)
            return combined(table, ids, self.combiner)
        return builder.get(self, "dense", make)


def embedding_column(categorical_column, dimension, combiner="mean", initializer=None,
                     ckpt_to_load_from=None, tensor_name_in_ckpt=None, max_norm=None,
                     trainable=True):
    """TF1's embedding_column: each example's ids of `categorical_column` as the
    combination ("mean", "sum" or "sqrtn", weighted for a weighted column) of their rows in
    a trained table `<column>_embedding/embedding_weights`: a Variable of num_buckets rows,
    or, for categorical_column_with_embedding, a hash-keyed embedding table. `initializer`
    defaults to a truncated normal of stddev 1/sqrt(dimension). An example without ids
    gives zeros."""
    if not getattr(categorical_column, "is_categorical", False):
        raise ValueError(f"embedding_column: categorical_column must be a categorical column, "
                         f"got {categorical_column!r}")
    if isinstance(dimension, bool) or not isinstance(dimension, int) or dimension < 1:
        raise ValueError(f"embedding_column: dimension must be a positive integer, got "
                         f"{dimension!r}")
    if combiner not in COMBINERS:
        raise ValueError(f"embedding_column: combiner must be one of {', '.join(COMBINERS)}, "
                         f"got {combiner!r}")
    if ckpt_to_load_from is not None or tensor_name_in_ckpt is not None or max_norm is not None:
        raise NotImplementedError("embedding_column: ckpt_to_load_from, tensor_name_in_ckpt "
                                  "and max_norm are not supported")
    if initializer is None:
        initializer = truncated_normal_initializer(stddev=1.0 / math.sqrt(dimension))
    return EmbeddingColumn(categorical_column, dimension, combiner, initializer, max_norm,
                           trainable)
