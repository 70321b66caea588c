"""The computational graph: nodes, placeholders, constants, the default graph and the default
session (the one `Node.eval()` runs in).

A graph only describes a computation. Values live elsewhere: a `Session` keeps the values of one
run in a dict local to that run and the values of Variables in its variable store, so one graph
can be run from several threads and by several sessions.
"""

import contextlib
import threading

import numpy as np

from .dtypes import as_dtype, float32, int32
from .errors import GraphMismatchError
from .shapes import TensorShape, as_shape, format_shape


class Graph:
    """A set of nodes; `as_default()` makes it the graph new nodes are added to."""

    def __init__(self):
        self.nodes = []
        self.variables = []  # global: on the parameter servers in a distributed session
        self.local_variables = []  # each process's own (metrics' counts, ...)
        self.seed = None
        self.global_step = None
        self._collections = {}
        self._names = {}
        self._name_stack = []
        self._control_stack = []  # lists of nodes that nodes made now must run after
        self._lock = threading.Lock()

    def unique_name(self, base):
        """Returns `base` under the current name scope, with a suffix if it was taken already."""
        full = "/".join(self._name_stack + [base])
        with self._lock:
            count = self._names.get(full, 0)
            self._names[full] = count + 1
        return full if count == 0 else f"{full}_{count}"

    def add_node(self, node):
        self.nodes.append(node)

    @contextlib.contextmanager
    def as_default(self):
        """Context manager in which `get_default_graph()` returns this graph."""
        _default_graph_stack.stack.append(self)
        try:
            yield self
        finally:
            _default_graph_stack.stack.pop()

    @contextlib.contextmanager
    def name_scope(self, name):
        """Context manager that prefixes the names of nodes created inside it with `name/`."""
        self._name_stack.append(name)
        try:
            yield name + "/"
        finally:
            self._name_stack.pop()

    @contextlib.contextmanager
    def control_dependencies(self, control_inputs):
        """Nodes made inside run after `control_inputs` (None: after nothing, as in TF1)."""
        if control_inputs is None:
            saved, self._control_stack = self._control_stack, []
            try:
                yield
            finally:
                self._control_stack = saved
            return
        inputs = [n for n in control_inputs if n is not None]
        for node in inputs:
            if not isinstance(node, Node):
                raise TypeError(f"control_dependencies takes graph nodes, got {node!r}")
        self._control_stack.append(inputs)
        try:
            yield
        finally:
            self._control_stack.pop()

    def control_inputs(self):
        return tuple(node for inputs in self._control_stack for node in inputs)

    # -- TF1's collections: the variable lists are kept above; any other name keeps a list --
    def add_to_collection(self, name, value):
        if name == "global_step":  # GraphKeys.GLOBAL_STEP names THE global step
            self.global_step = value
        self._collections.setdefault(name, []).append(value)

    def get_collection_ref(self, name):
        return self._collections.setdefault(name, [])

    def get_collection(self, name, scope=None):
        if name == "variables":
            values = self.variables
        elif name == "local_variables":
            values = self.local_variables
        elif name == "trainable_variables":
            values = [v for v in self.variables if v.trainable]
        elif name == "global_step":
            values = [self.global_step] if self.global_step is not None else []
        else:
            values = self._collections.get(name, [])
        if scope:
            values = [v for v in values if getattr(v, "name", "").startswith(scope)]
        return list(values)

    def get_all_collection_keys(self):
        return sorted(set(self._collections) | {"variables", "trainable_variables"})

    def get_node_by_name(self, name):
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node named {name!r} in this graph")


class _DefaultGraphStack(threading.local):
    def __init__(self):
        self.stack = []


_default_graph_stack = _DefaultGraphStack()
_global_default_graph = Graph()


def get_default_graph():
    """The graph new nodes go to: the innermost `as_default()` graph, else the global one."""
    stack = _default_graph_stack.stack
    return stack[-1] if stack else _global_default_graph


def reset_default_graph():
    """Replaces the global default graph with a new empty one."""
    global _global_default_graph
    if _default_graph_stack.stack:
        raise RuntimeError("reset_default_graph() called inside a `with graph.as_default()` block")
    _global_default_graph = Graph()


def name_scope(name):
    """`with psflow.name_scope("layer1"):` prefixes the names of new nodes."""
    return get_default_graph().name_scope(name)


def control_dependencies(control_inputs):
    """Context manager: nodes made inside run after `control_inputs` in every run."""
    return get_default_graph().control_dependencies(control_inputs)


@contextlib.contextmanager
def device(device_name_or_function):
    """Accepted for TF1 compatibility and ignored: psflow places Variables on parameter
    servers itself (by size, see psflow.worker.placement) and runs ops on the worker."""
    yield


def set_random_seed(seed):
    """Sets the graph-level seed: random initializers become deterministic."""
    get_default_graph().seed = int(seed)


class _DefaultSessionStack(threading.local):
    def __init__(self):
        self.stack = []


_default_sessions = _DefaultSessionStack()


def get_default_session():
    """The session of the innermost `with Session() as sess:` block, or None. It lives beside
    the default graph because `Node.eval()` runs in it."""
    stack = _default_sessions.stack
    return stack[-1] if stack else None


class _DefaultSession:
    def __init__(self, session):
        self.session = session

    def __enter__(self):
        _default_sessions.stack.append(self.session)
        return self.session

    def __exit__(self, *exc_info):
        _default_sessions.stack.pop()
        return False


def default_session(session):
    """Context manager in which `session` is the default session (an InteractiveSession
    enters it by hand and stays the default until it is closed)."""
    return _DefaultSession(session)


class Node:
    """A node of the graph; evaluating it in a session gives a numpy array (or None for ops
    run only for their effect, like a train op).

    `shape` is the static shape (a tuple with None for unknown dimensions, or None when even
    the rank is unknown); `dtype` is a numpy dtype, or None when the node has no value.
    """

    is_sparse = False  # True for gradient nodes whose value is an IndexedSlices

    def __init__(self, inputs=(), name=None, shape=None, dtype=None, graph=None,
                 unique_name=None):
        inputs = tuple(inputs)
        if graph is None:
            graph = inputs[0].graph if inputs else get_default_graph()
        for node in inputs:
            if node.graph is not graph:
                same = [n for n in inputs if n.graph is graph]
                other = repr(same[0].name) if same else "the nodes of the graph it is added to"
                raise GraphMismatchError(
                    f"cannot combine {node.name!r} with {other} in {type(self).__name__}: they "
                    "belong to different graphs; every input of an op must come from the same "
                    "graph")
        self.graph = graph
        self.inputs = inputs
        self.control_inputs = graph.control_inputs() if graph._control_stack else ()
        self.shape = shape
        self.dtype = dtype
        self.name = unique_name or graph.unique_name(name or type(self).__name__)
        graph.add_node(self)

    def executor(self, session):
        """Returns the function a session calls with the input values to get this node's value.
        Stateful nodes (variables, assignments, train ops) bind to the session's store here."""
        return self.forward

    def forward(self, *values):
        raise NotImplementedError(f"{type(self).__name__} has no forward")

    def eval(self, feed_dict=None, session=None):
        """Evaluates this node in `session`, or in the default session."""
        session = session or get_default_session()
        if session is None:
            raise ValueError(f"cannot evaluate {self.name!r}: no session given and no default "
                             "session (use `with psflow.Session() as sess:`)")
        return session.run(self, feed_dict=feed_dict)

    run = eval

    @property
    def shape(self):
        return self._shape

    @shape.setter
    def shape(self, shape):
        self._shape = None if shape is None else TensorShape(shape)

    def get_shape(self):
        return self.shape

    def __getattr__(self, name):
        if name == "op":  # TF1's tensor.op: in psflow an op and its output are one object
            return self
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self):
        dtype = self.dtype.name if self.dtype is not None else "none"
        return f"<{type(self).__name__} {self.name!r} shape={format_shape(self.shape)} " \
               f"dtype={dtype}>"

    # Graph nodes are compared by identity (as in TF1), so they can be dict keys.
    __hash__ = object.__hash__


Tensor = Node


class Placeholder(Node):
    """A value that must be fed to `Session.run` in `feed_dict`."""

    def __init__(self, dtype=float32, shape=None, name=None):
        super().__init__(name=name or "Placeholder", shape=as_shape(shape),
                         dtype=as_dtype(dtype))

    def forward(self):
        # Only reached when the placeholder is needed but was not fed; the session reports it.
        raise AssertionError("placeholder evaluated without a feed")


def placeholder(dtype=float32, shape=None, name=None):
    """A placeholder, TF1 style: `placeholder(psflow.float32, shape=(None, 64), name="x")`.

    The first argument is the dtype as in TensorFlow; a list or tuple there is taken as the
    shape (`placeholder((None, 64), psflow.float32)`) since that order reads naturally too.
    """
    if isinstance(dtype, (list, tuple)):
        dtype, shape = (shape if shape is not None else float32), dtype
    return Placeholder(dtype=dtype, shape=shape, name=name)


class Constant(Node):
    """A fixed value stored in the graph."""

    def __init__(self, value, dtype=None, name=None, graph=None):
        value = np.array(value, dtype=_default_dtype(value, dtype))
        value.setflags(write=False)
        self.value = value
        super().__init__(name=name or "Const", shape=value.shape, dtype=value.dtype,
                         graph=graph)

    def forward(self):
        return self.value


def _default_dtype(value, dtype):
    """TensorFlow's conversion rule: Python floats become float32 and ints int32, numpy
    values keep their dtype."""
    if dtype is not None:
        return as_dtype(dtype)
    if isinstance(value, np.ndarray) or isinstance(value, np.generic):
        return value.dtype
    arr = np.asarray(value)
    if arr.dtype == np.float64:
        return float32
    if arr.dtype == np.int64:
        return int32
    return arr.dtype


def constant(value, dtype=None, shape=None, name=None):
    """A constant node; with `shape`, a scalar `value` is broadcast to that shape."""
    if shape is not None:
        value = np.broadcast_to(np.asarray(value, dtype=_default_dtype(value, dtype)),
                                as_shape(shape))
    return Constant(value, dtype=dtype, name=name)


def convert_to_tensor(value, dtype=None, graph=None):
    """Returns `value` if it is a node, else a Constant holding it (of `dtype` if given, so
    `x * 2` keeps the dtype of x)."""
    if isinstance(value, Node):
        return value
    if dtype is not None and not isinstance(value, np.ndarray):
        dtype = as_dtype(dtype)
        if dtype.kind in "biu":
            given = np.asarray(value)
            if given.dtype.kind not in "biu" and not np.array_equal(given.astype(dtype), given):
                raise TypeError(f"cannot convert {value!r} to {dtype.name} without changing "
                                "its value; cast the tensor to a float dtype first")
        return Constant(value, dtype=dtype, graph=graph)
    return Constant(value, graph=graph)


def topological_order(targets, stop_at=(), control=True):
    """Every node that `targets` depend on, each once, inputs before the nodes that use them.

    Traversal does not go past nodes in `stop_at` (fed placeholders) though they are included.
    The order serves both a session's forward pass and `gradients`' reverse pass. Without
    `control`, only data inputs are followed (a servable's pruned graph).
    """
    order = []
    visited = set()
    stop_at = set(stop_at)
    for target in targets:
        if target in visited:
            continue
        # Iterative depth-first search, so deep graphs don't hit Python's recursion limit.
        stack = [(target, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if node in visited:
                continue
            visited.add(node)
            stack.append((node, True))
            if node not in stop_at:
                for inp in reversed(node.inputs + node.control_inputs if control
                                    else node.inputs):
                    if inp not in visited:
                        stack.append((inp, False))
    return order
