"""psflow: parameter-server training with a TensorFlow-1-style graph engine.

`import psflow as tf` lets most TF1 graph code run unchanged: placeholders, Variables, ops,
`gradients`, `Session`, and the optimizers in `psflow.train`.
"""

import os as _os
import sys as _sys

# An input pipeline runs in a process forked from the training process (data/input_process.py),
# which never calls gRPC. gRPC's own fork handlers, when a thread of the training process is
# inside a gRPC call at the fork, skip their preparation and then crash that child (SIGSEGV):
# they stay off unless GRPC_ENABLE_FORK_SUPPORT says otherwise, set before gRPC starts.
_os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from . import (
    app,
    contrib,
    data,
    errors,
    feature_column,
    io,
    layers,
    metrics,
    nn,
    saved_model,
    strings,
    summary,
    train,
)
from . import tf_logging as logging
from .array_ops import concat, gather, one_hot, ones, slice, split, stack, unstack, zeros
from .checkpoint import load_model, lookup
from .clip_ops import clip_by_global_norm, clip_by_value, global_norm
from .comparison_ops import (
    equal,
    greater,
    greater_equal,
    less,
    less_equal,
    logical_and,
    logical_not,
    logical_or,
    logical_xor,
    not_equal,
    where,
)
from .config import ConfigProto, GPUOptions
from .csv_ops import decode_csv
from .dtypes import as_dtype, bool_, float16, float32, float64, int32, int64, string
from .embedding_variable import (
    CounterFilter,
    EmbeddingVariableOption,
    GlobalStepEvict,
    InitializerOption,
    get_embedding_variable,
)
from .gradients import gradients
from .graph import (
    Graph,
    Node,
    Tensor,
    constant,
    control_dependencies,
    device,
    get_default_graph,
    get_default_session,
    name_scope,
    placeholder,
    reset_default_graph,
    set_random_seed,
)
from .indexed_slices import IndexedSlices
from .initializers import (
    AUTO_REUSE,
    constant_initializer,
    fixed_size_partitioner,
    get_variable,
    get_variable_scope,
    glorot_normal_initializer,
    glorot_uniform_initializer,
    min_max_variable_partitioner,
    ones_initializer,
    random_normal,
    random_normal_initializer,
    random_uniform,
    random_uniform_initializer,
    truncated_normal,
    truncated_normal_initializer,
    variable_scope,
    zeros_initializer,
)
from .math_ops import (
    abs,
    add,
    add_n,
    cast,
    divide,
    exp,
    floor,
    identity,
    log,
    matmul,
    maximum,
    minimum,
    multiply,
    negative,
    ones_like,
    pow,
    round,
    sign,
    sqrt,
    square,
    subtract,
    zeros_like,
)
from .nn_ops import sigmoid, tanh
from .reduction_ops import argmax, reduce_max, reduce_mean, reduce_min, reduce_prod, reduce_sum
from .session import InteractiveSession, Session
from .shape_ops import expand_dims, reshape, squeeze, tile, transpose
from .sparse_ops import SparseTensor, SparseTensorValue, sparse_placeholder
from .state_ops import global_variables_initializer, group, no_op, variables_initializer
from .string_ops import as_string, string_to_hash_bucket_fast
from .string_split import string_split
from .unimplemented import refuse as _refuse
from .variables import (
    GraphKeys,
    Variable,
    add_to_collection,
    add_to_collections,
    get_collection,
    get_collection_ref,
    global_variables,
    local_variables,
    local_variables_initializer,
    trainable_variables,
)

bool = bool_  # noqa: A001 -- TF's name for the boolean dtype


class compat:  # noqa: N801 -- TF's name
    """`tf.compat.v1`: TF1's API, which is psflow's own."""

    v1 = _sys.modules[__name__]

__version__ = "0.1.0"


def __getattr__(name):
    raise _refuse("tf", name)
