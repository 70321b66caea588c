"""`get_embedding_variable`: an embedding table without a vocabulary, with DeepRec's
EmbeddingVariable API. Keys are any int64; a key's row is created the first time a training
step looks it up (from the initializer, as a function of the table and the key), admitted
after `CounterFilter(filter_freq)` sightings, and evicted after `GlobalStepEvict(steps_to_live)`
global steps without an update, or, with `max_rows`, when a lookup would make the table larger
than that (least recently updated rows first). Read it with `nn.embedding_lookup` or
`nn.embedding_lookup_sparse`; train it with any optimizer. Its rows live in the session's
store: in this process, or on every parameter server, each key on the shard its hash picks."""

import numpy as np

from .dtypes import as_dtype, float32, int64
from .errors import InvalidArgumentError
from .graph import Node, get_default_graph
from .initializers import (
    constant_initializer,
    ones_initializer,
    random_normal_initializer,
    random_uniform_initializer,
    truncated_normal_initializer,
    zeros_initializer,
)
from .row_init import name_seed
from .variables import Variable


class CounterFilter:
    """Admission: a key gets a trainable row once it has been seen `filter_freq` times;
    before, it reads as zeros and its gradients are dropped."""

    def __init__(self, filter_freq=0):
        if int(filter_freq) < 0:
            raise ValueError(f"CounterFilter: filter_freq must be >= 0, got {filter_freq}")
        self.filter_freq = int(filter_freq)


class GlobalStepEvict:
    """Eviction: rows not updated within `steps_to_live` global steps are removed (at each
    checkpoint, and every `steps_to_live` steps on the parameter servers). `max_rows` caps the
    rows of the table (each of M parameter servers keeps up to max_rows / M of them, rounded
    up): a lookup that would create more removes the least recently updated rows first."""

    def __init__(self, steps_to_live=None, max_rows=None):
        if steps_to_live is not None and int(steps_to_live) < 1:
            raise ValueError(f"GlobalStepEvict: steps_to_live must be >= 1, got "
                             f"{steps_to_live}")
        self.steps_to_live = None if steps_to_live is None else int(steps_to_live)
        self.max_rows = check_max_rows(max_rows, "GlobalStepEvict")


def check_max_rows(max_rows, what):
    """`max_rows` as an int (None: no cap); ValueError naming `what` if not positive."""
    if max_rows is None:
        return None
    if int(max_rows) != max_rows or int(max_rows) < 1:
        raise ValueError(f"{what}: max_rows must be a positive integer, got {max_rows!r}")
    return int(max_rows)


class InitializerOption:
    """DeepRec's initializer option; psflow reads `initializer`. Keys not admitted read as
    `default_value_no_permission` (only 0.0 is supported)."""

    def __init__(self, initializer=None, default_value_dim=4096,
                 default_value_no_permission=0.0):
        if default_value_no_permission != 0.0:
            raise NotImplementedError("InitializerOption: keys not admitted read as zeros; "
                                      "default_value_no_permission must be 0.0")
        self.initializer = initializer
        self.default_value_dim = default_value_dim


class EmbeddingVariableOption:
    """DeepRec's EmbeddingVariableOption: `filter_option` (CounterFilter), `evict_option`
    (GlobalStepEvict), `init_option` (InitializerOption). Storage and hash-table choices
    (`ht_type`, `storage_option`, ...) are psflow's own and are accepted and ignored."""

    def __init__(self, ht_type=None, ht_partition_num=None, evict_option=None, ckpt=None,
                 filter_option=None, storage_option=None, init_option=None):
        for name, value, kind in (("filter_option", filter_option, CounterFilter),
                                  ("evict_option", evict_option, GlobalStepEvict),
                                  ("init_option", init_option, InitializerOption)):
            if value is not None and not isinstance(value, kind):
                raise TypeError(f"EmbeddingVariableOption: {name} must be a {kind.__name__}, "
                                f"got {value!r}")
        self.filter_option = filter_option
        self.evict_option = evict_option
        self.init_option = init_option


def initializer_spec(initializer, name, dim, graph):
    """The table's initializer as the plain spec the store draws rows with."""
    if initializer is None:
        initializer = truncated_normal_initializer(stddev=1.0 / np.sqrt(dim))
    seed = name_seed(name, getattr(initializer, "seed", None) or graph.seed or 0)
    if isinstance(initializer, zeros_initializer):
        return {"kind": "zeros"}
    if isinstance(initializer, ones_initializer):
        return {"kind": "ones"}
    if isinstance(initializer, constant_initializer):
        value = np.asarray(initializer.value)
        if value.size != 1:
            raise ValueError(f"get_embedding_variable({name!r}): a constant initializer "
                             "needs one number (every row starts the same)")
        return {"kind": "constant", "value": float(value.reshape(-1)[0])}
    if isinstance(initializer, truncated_normal_initializer):
        return {"kind": "truncated_normal", "mean": float(initializer.mean),
                "stddev": float(initializer.stddev), "seed": seed}
    if isinstance(initializer, random_normal_initializer):
        return {"kind": "random_normal", "mean": float(initializer.mean),
                "stddev": float(initializer.stddev), "seed": seed}
    if isinstance(initializer, random_uniform_initializer):
        return {"kind": "random_uniform", "minval": float(initializer.minval),
                "maxval": float(initializer.maxval), "seed": seed}
    raise ValueError(f"get_embedding_variable({name!r}): initializer {initializer!r} is not "
                     "supported; use zeros_initializer, ones_initializer, "
                     "constant_initializer, random_normal_initializer, "
                     "truncated_normal_initializer or random_uniform_initializer")


class EmbeddingVariable(Variable):
    """A hash-keyed table of rows of `embedding_dim` values (see get_embedding_variable)."""

    is_table = True

    def __init__(self, name, embedding_dim, dtype, initializer, filter_freq, steps_to_live,
                 trainable=True, max_rows=None):
        graph = get_default_graph()
        name = graph.unique_name(name)
        self.embedding_dim = int(embedding_dim)
        self.initializer_spec = initializer_spec(initializer, name, self.embedding_dim, graph)
        self.filter_freq = int(filter_freq or 0)
        self.steps_to_live = steps_to_live
        self.max_rows = max_rows
        self.local = False
        self.trainable = bool(trainable)
        self.initial_value = None
        self.partitions = None
        Node.__init__(self, shape=(None, self.embedding_dim), dtype=as_dtype(dtype),
                      graph=graph, unique_name=name)
        graph.variables.append(self)
        self._initializer_op = None

    def executor(self, session):
        name = self.name

        def refuse():
            raise InvalidArgumentError(
                f"embedding table {name!r} has no fixed rows to read whole; read it through "
                "nn.embedding_lookup / embedding_lookup_sparse (or export it with "
                "psflow.load_model)")
        return refuse

    def assign(self, value, name=None):
        raise TypeError(f"embedding table {self.name!r} cannot be assigned; its rows are "
                        "created by lookups")

    assign_add = assign_sub = assign

    def spec(self):
        """What a store needs to hold the table."""
        return {"name": self.name, "dim": self.embedding_dim, "dtype": self.dtype.name,
                "initializer": dict(self.initializer_spec), "filter_freq": self.filter_freq,
                "steps_to_live": self.steps_to_live, "max_rows": self.max_rows}


def get_embedding_variable(name, embedding_dim, key_dtype=int64, value_dtype=None,
                           initializer=None, regularizer=None, trainable=True, collections=None,
                           caching_device=None, partitioner=None, validate_shape=True,
                           custom_getter=None, constraint=None, steps_to_live=None,
                           init_data_source=None, ev_option=None, max_rows=None):
    """A hash-keyed embedding table named `name` with rows of `embedding_dim` values, as
    DeepRec's tf.get_embedding_variable. `initializer` (default truncated normal with
    stddev 1/sqrt(embedding_dim)) draws each key's first row, the same for a key on any shard
    and in any run; `ev_option` takes a CounterFilter and a GlobalStepEvict. `max_rows` (or
    the GlobalStepEvict's) caps the rows of the table (each of M parameter servers keeps up to
    max_rows / M, rounded up, of the keys that hash to it), evicting the least recently
    updated rows first. A `partitioner`
    is accepted: the rows are spread over every parameter server by key hash anyway."""
    if int(embedding_dim) < 1:
        raise ValueError(f"get_embedding_variable({name!r}): embedding_dim must be positive, "
                         f"got {embedding_dim}")
    if as_dtype(key_dtype) not in (np.dtype(np.int64), np.dtype(np.int32)):
        raise ValueError(f"get_embedding_variable({name!r}): key_dtype must be int64 or "
                         f"int32, got {as_dtype(key_dtype).name}")
    unsupported = [n for n, v in (("regularizer", regularizer), ("constraint", constraint),
                                  ("custom_getter", custom_getter),
                                  ("init_data_source", init_data_source)) if v is not None]
    if unsupported:
        raise NotImplementedError(f"get_embedding_variable({name!r}): "
                                  f"{', '.join(unsupported)} not supported")
    if collections is not None and "local_variables" in collections:
        raise ValueError(f"get_embedding_variable({name!r}): a table cannot be local")
    graph = get_default_graph()
    full = "/".join(graph._name_stack + [name])
    if any(v.name == full for v in graph.variables + graph.local_variables):
        raise ValueError(f"variable {full!r} already exists in this graph")
    ev_option = ev_option or EmbeddingVariableOption()
    if initializer is None and ev_option.init_option is not None:
        initializer = ev_option.init_option.initializer
    filter_freq = ev_option.filter_option.filter_freq if ev_option.filter_option else 0
    max_rows = check_max_rows(max_rows, f"get_embedding_variable({name!r})")
    if ev_option.evict_option is not None:
        if ev_option.evict_option.steps_to_live:
            steps_to_live = ev_option.evict_option.steps_to_live
        max_rows = ev_option.evict_option.max_rows or max_rows
    dtype = value_dtype if value_dtype is not None else float32
    if as_dtype(dtype).kind != "f":
        raise ValueError(f"get_embedding_variable({name!r}): value_dtype must be a float "
                         f"type, got {as_dtype(dtype).name}")
    return EmbeddingVariable(name, embedding_dim, dtype, initializer, filter_freq,
                             steps_to_live, trainable, max_rows)
