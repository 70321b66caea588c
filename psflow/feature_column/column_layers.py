"""`input_layer` and `linear_model`: the columns of a model, applied to a batch of raw
features, sorted by name as TF1 does."""

from ..array_ops import concat
from ..initializers import AUTO_REUSE, get_variable, variable_scope, zeros_initializer
from ..math_ops import add_n, matmul
from ..nn_ops import bias_add
from .column_inputs import Builder, pruned
from .dense_columns import combined, table_of


def _sorted_columns(function, feature_columns, dense_only):
    columns = list(feature_columns) if isinstance(feature_columns, (list, tuple, set)) \
        else [feature_columns]
    if not columns:
        raise ValueError(f"{function}: feature_columns is empty")
    names = set()
    for column in columns:
        if not hasattr(column, "is_dense") or not hasattr(column, "name"):
            raise ValueError(f"{function}: {column!r} is not a feature column")
        if dense_only and not column.is_dense:
            raise ValueError(f"{function}: {column.name!r} is categorical; wrap it in "
                             "embedding_column or indicator_column")
        if column.name in names:
            raise ValueError(f"{function}: two columns are named {column.name!r}")
        names.add(column.name)
    return sorted(columns, key=lambda c: c.name)


def input_layer(features, feature_columns, weight_collections=None, trainable=True,
                cols_to_vars=None):
    """TF1's tf.feature_column.input_layer: each dense column's (batch, d) tensor for the
    raw `features` ({key: tensor or SparseTensor}), concatenated in the order of the
    columns' names: (batch, sum of d). Tables are made under `input_layer/` and shared by
    later calls in the same graph."""
    columns = _sorted_columns("input_layer", feature_columns, dense_only=True)
    builder = Builder(features)
    with variable_scope("input_layer", reuse=AUTO_REUSE):
        parts = [run[0].shared_group.dense_tensor(builder, run) if len(run) > 1
                 else run[0].dense_tensor(builder) for run in _shared_runs(columns)]
        return parts[0] if len(parts) == 1 else concat(parts, axis=1)


def _shared_runs(columns):
    """The columns in order, adjacent ones of the same shared embedding group together (one
    lookup for them all), every other column alone."""
    runs = []
    for column in columns:
        group = getattr(column, "shared_group", None)
        if runs and group is not None and getattr(runs[-1][0], "shared_group", None) is group:
            runs[-1].append(column)
        else:
            runs.append([column])
    return runs


def linear_model(features, feature_columns, units=1, sparse_combiner="sum",
                 weight_collections=None, trainable=True, cols_to_vars=None):
    """TF1's tf.feature_column.linear_model: the (batch, units) sum over the columns of
    their weighted inputs plus a bias. A dense column's (batch, d) tensor is multiplied by
    its weights `linear_model/<column>/weights` (d, units); a categorical column's ids pick
    rows of weights (num_buckets, units), combined by `sparse_combiner`. Weights and bias
    start at zero."""
    columns = _sorted_columns("linear_model", feature_columns, dense_only=False)
    if isinstance(units, bool) or not isinstance(units, int) or units < 1:
        raise ValueError(f"linear_model: units must be a positive integer, got {units!r}")
    builder = Builder(features)
    terms = []
    with variable_scope("linear_model", reuse=AUTO_REUSE):
        for column in columns:
            with variable_scope(column.name):
                if column.is_categorical:
                    ids = pruned(column.sparse_ids(builder), keys=column.ids_are_keys)
                    weights = table_of("weights", column, units, zeros_initializer(),
                                       trainable)
                    terms.append(combined(weights, ids, sparse_combiner))
                else:
                    weights = get_variable("weights", shape=(column.variable_shape, units),
                                           initializer=zeros_initializer(),
                                           trainable=trainable)
                    terms.append(matmul(column.dense_tensor(builder), weights))
        bias = get_variable("bias_weights", shape=(units,), initializer=zeros_initializer(),
                            trainable=trainable)
        total = terms[0] if len(terms) == 1 else add_n(terms)
        return bias_add(total, bias)
