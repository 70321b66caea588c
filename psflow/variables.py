"""`Variable`: a value that persists across `Session.run` calls, held by the session's variable
store (in this process, or on the parameter servers). A local variable (collections=
[GraphKeys.LOCAL_VARIABLES]) is always held by the process that runs it."""

from .graph import Node, as_dtype, convert_to_tensor, get_default_graph
from .math_ops import cast, identity
from .state_ops import Assign, variables_initializer


class Variable(Node):
    """A trainable or stateful value that persists across `Session.run` calls.

    `initial_value` may be an array, a Python number, a node (evaluated when the initializer
    runs) or a callable returning either. With `collections` holding
    GraphKeys.LOCAL_VARIABLES the variable is local: never trained, saved or sent to a
    parameter server, and initialized by local_variables_initializer().
    """

    is_table = False  # an EmbeddingVariable: rows by key, made as lookups meet new keys

    def __init__(self, initial_value, trainable=True, name=None, dtype=None, collections=None):
        collections = list(collections or [GraphKeys.GLOBAL_VARIABLES])
        self.local = GraphKeys.LOCAL_VARIABLES in collections
        if callable(initial_value) and not isinstance(initial_value, Node):
            initial_value = initial_value()
        graph = get_default_graph()
        name = graph.unique_name(name or "Variable")
        with graph.name_scope(name):
            init = convert_to_tensor(initial_value, dtype=dtype)
            if dtype is not None and init.dtype != as_dtype(dtype):
                init = cast(init, dtype)
        self.initial_value = init
        self.trainable = bool(trainable) and not self.local
        super().__init__(shape=init.shape, dtype=init.dtype, graph=graph, unique_name=name)
        (graph.local_variables if self.local else graph.variables).append(self)
        for collection in collections:  # the variable lists above are their own collections
            if collection not in (GraphKeys.GLOBAL_VARIABLES, GraphKeys.LOCAL_VARIABLES,
                                  GraphKeys.TRAINABLE_VARIABLES):
                graph.add_to_collection(collection, self)
        self._initializer_op = None
        self.partitions = None  # the row parts a partitioner asked for (get_variable)

    def executor(self, session):
        read = session.store_for(self).read
        return lambda: read(self)

    @property
    def initializer(self):
        """The op that assigns this variable its initial value."""
        if self._initializer_op is None:
            self._initializer_op = variables_initializer([self], name=self.name + "/Assign")
        return self._initializer_op

    def assign(self, value, name=None):
        return Assign(self, convert_to_tensor(value, dtype=self.dtype), name=name)

    def assign_add(self, delta, name=None):
        return Assign(self, convert_to_tensor(delta, dtype=self.dtype), mode="add", name=name)

    def assign_sub(self, delta, name=None):
        return Assign(self, convert_to_tensor(delta, dtype=self.dtype), mode="sub", name=name)

    def read_value(self):
        return identity(self)


class GraphKeys:
    """The variable collections of TF1's GraphKeys that psflow keeps."""
    GLOBAL_VARIABLES = "variables"
    LOCAL_VARIABLES = "local_variables"
    TRAINABLE_VARIABLES = "trainable_variables"
    METRIC_VARIABLES = "metric_variables"
    VARIABLE_COLLECTIONS = (GLOBAL_VARIABLES, LOCAL_VARIABLES, TRAINABLE_VARIABLES,
                            METRIC_VARIABLES)
    GLOBAL_STEP = "global_step"
    SUMMARIES = "summaries"
    UPDATE_OPS = "update_ops"
    LOSSES = "losses"
    REGULARIZATION_LOSSES = "regularization_losses"
    TRAIN_OP = "train_op"
    INIT_OP = "init_op"
    LOCAL_INIT_OP = "local_init_op"
    READY_OP = "ready_op"
    SUMMARY_OP = "summary_op"
    SAVERS = "savers"
    QUEUE_RUNNERS = "queue_runners"
    MODEL_VARIABLES = "model_variables"
    MOVING_AVERAGE_VARIABLES = "moving_average_variables"


def get_collection(key, scope=None):
    """The values in the default graph's collection `key` (a list; empty if none), those
    whose names start with `scope` when it is given."""
    return get_default_graph().get_collection(key, scope)


def get_collection_ref(key):
    return get_default_graph().get_collection_ref(key)


def add_to_collection(name, value):
    get_default_graph().add_to_collection(name, value)


def add_to_collections(names, value):
    for name in ([names] if isinstance(names, str) else names):
        add_to_collection(name, value)


def global_variables(graph=None):
    """Every global (not local) Variable of the (default) graph."""
    return list((graph or get_default_graph()).variables)


def local_variables(graph=None):
    """The local Variables of the (default) graph (metrics' counts and the like)."""
    return list((graph or get_default_graph()).local_variables)


def local_variables_initializer():
    """An op that initializes every local variable of the default graph."""
    return variables_initializer(get_default_graph().local_variables, name="init_local")


def trainable_variables(graph=None):
    """The Variables created with `trainable=True`."""
    return [v for v in (graph or get_default_graph()).variables if v.trainable]
