"""`psflow.feature_column` (TF1's tf.feature_column): raw features into a model's inputs,
in the graph, so an exported model takes the raw features too. See docs/feature-columns.md."""

from ..unimplemented import refuse as _refuse
from .categorical_columns import (
    categorical_column_with_embedding,
    categorical_column_with_hash_bucket,
    categorical_column_with_identity,
    categorical_column_with_vocabulary_file,
    categorical_column_with_vocabulary_list,
    crossed_column,
    weighted_categorical_column,
)
from .column_layers import input_layer, linear_model
from .dense_columns import embedding_column, indicator_column
from .numeric_columns import bucketized_column, numeric_column
from .shared_columns import shared_embedding_columns

__all__ = [
    "bucketized_column", "categorical_column_with_embedding",
    "categorical_column_with_hash_bucket", "categorical_column_with_identity",
    "categorical_column_with_vocabulary_file", "categorical_column_with_vocabulary_list",
    "crossed_column", "embedding_column", "indicator_column", "input_layer", "linear_model",
    "numeric_column", "shared_embedding_columns", "weighted_categorical_column",
]


def __getattr__(name):
    raise _refuse("tf.feature_column", name)
