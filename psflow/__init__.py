"""psflow: parameter-server training with a TensorFlow-1-style graph engine.

`import psflow as tf` lets most TF1 graph code run unchanged: placeholders, Variables, ops,
`gradients`, `Session`, and the optimizers in `psflow.train`.
"""

from . import app, contrib, errors, layers, metrics, nn, summary, train
from . import tf_logging as logging
from .array_ops import concat, gather, one_hot, ones, reshape, slice, split, transpose, zeros
from .checkpoint import load_model, lookup
from .embedding_variable import (CounterFilter, EmbeddingVariableOption, GlobalStepEvict,
                                 InitializerOption, get_embedding_variable)
from .gradients import IndexedSlices, gradients
from .graph import (Graph, Node, Tensor, as_dtype, bool_, constant, control_dependencies, device, float16, float32,
                    float64, get_default_graph, int32, int64, name_scope, placeholder,
                    reset_default_graph, set_random_seed)
from .initializers import (AUTO_REUSE, constant_initializer, fixed_size_partitioner, get_variable,
                           get_variable_scope, variable_scope,
                           glorot_normal_initializer, glorot_uniform_initializer,
                           min_max_variable_partitioner, ones_initializer, random_normal,
                           random_normal_initializer, random_uniform, random_uniform_initializer,
                           truncated_normal, truncated_normal_initializer, zeros_initializer)
from .math_ops import (add, add_n, argmax, cast, divide, equal, exp, identity, log, matmul,
                       multiply, negative, ones_like, reduce_mean, reduce_sum, sqrt, square,
                       subtract, zeros_like)
from .more_ops import (abs, clip_by_global_norm, clip_by_value, expand_dims, floor,
                       global_norm, greater, greater_equal, less, less_equal, logical_and,
                       logical_not, logical_or, logical_xor, maximum, minimum, not_equal, pow,
                       reduce_max, reduce_min, reduce_prod, round, sign, squeeze, stack, tile,
                       unstack, where)
from .nn_ops import sigmoid, tanh
from .config import ConfigProto, GPUOptions
from .session import InteractiveSession, Session, get_default_session
from .sparse_ops import SparseTensor, SparseTensorValue, sparse_placeholder
from .state_ops import global_variables_initializer, group, no_op, variables_initializer
from .variables import (GraphKeys, Variable, add_to_collection, add_to_collections,
                        get_collection, get_collection_ref, global_variables, local_variables,
                        local_variables_initializer, trainable_variables)

bool = bool_  # noqa: A001 -- TF's name for the boolean dtype

__version__ = "0.1.0"


def __getattr__(name):
    from .unimplemented import refuse
    raise refuse("tf", name)
