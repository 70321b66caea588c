"""`Variable`: a value that persists across `Session.run` calls, held by the session's variable
store (in this process, or on the parameter servers)."""

from .graph import Node, as_dtype, convert_to_tensor, get_default_graph
from .math_ops import cast, identity
from .state_ops import Assign, variables_initializer


class Variable(Node):
    """A trainable or stateful value that persists across `Session.run` calls.

    `initial_value` may be an array, a Python number, a node (evaluated when the initializer
    runs) or a callable returning either.
    """

    def __init__(self, initial_value, trainable=True, name=None, dtype=None):
        if callable(initial_value) and not isinstance(initial_value, Node):
            initial_value = initial_value()
        graph = get_default_graph()
        name = graph.unique_name(name or "Variable")
        with graph.name_scope(name):
            init = convert_to_tensor(initial_value, dtype=dtype)
            if dtype is not None and init.dtype != as_dtype(dtype):
                init = cast(init, dtype)
        self.initial_value = init
        self.trainable = bool(trainable)
        super().__init__(shape=init.shape, dtype=init.dtype, graph=graph, unique_name=name)
        graph.variables.append(self)
        self._initializer_op = None
        self.partitions = None  # the row parts a partitioner asked for (get_variable)

    def executor(self, session):
        read = session.store.read
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


def global_variables(graph=None):
    """Every Variable of the (default) graph."""
    return list((graph or get_default_graph()).variables)


def trainable_variables(graph=None):
    """The Variables created with `trainable=True`."""
    return [v for v in (graph or get_default_graph()).variables if v.trainable]
