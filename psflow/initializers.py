"""Initializers (callables `(shape, dtype) -> array`), random ops and `get_variable`.

Randomness is seeded as in TensorFlow: an op-level `seed`, a graph-level seed
(`psflow.set_random_seed`), or both make results repeatable; neither gives fresh randomness.
"""

import contextlib

import numpy as np

from .dtypes import as_dtype, float32
from .graph import Node, get_default_graph
from .shapes import as_shape
from .variables import Variable


def _seed_material(seed, graph=None):
    """What seeds a random op's generator: None (fresh randomness) when neither the op nor
    the graph has a seed, else [graph seed, op seed]."""
    graph = graph or get_default_graph()
    if seed is None and graph.seed is None:
        return None
    if seed is None:
        # Derive a distinct, repeatable seed for each random op of a seeded graph.
        graph.random_ops = getattr(graph, "random_ops", 0) + 1
        seed = graph.random_ops
    return [graph.seed or 0, int(seed)]


def random_generator(seed, graph=None):
    """A numpy Generator seeded from the op's `seed` and the graph-level seed (fresh entropy
    when neither is set)."""
    return np.random.default_rng(_seed_material(seed, graph))


def _fans(shape):
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return shape[-2] * receptive, shape[-1] * receptive


class Initializer:
    """`init(shape, dtype)` gives an array; `init.bind(shape, dtype)` a function giving the
    same array each time it is called (seeded) without drawing it now."""

    seed = None

    def __call__(self, shape, dtype=float32):
        return self.bind(shape, dtype)()

    def bind(self, shape, dtype=float32):
        shape = as_shape(shape)
        if shape is None or None in shape:
            raise ValueError(f"{type(self).__name__} needs a fully known shape, got {shape}")
        dtype = as_dtype(dtype)
        material = _seed_material(self.seed) if self.random else None
        return lambda: np.asarray(self.sample(shape, np.random.default_rng(material)),
                                  dtype=dtype)

    random = False

    def sample(self, shape, rng):
        raise NotImplementedError


class zeros_initializer(Initializer):
    def sample(self, shape, rng):
        return np.zeros(shape)


class ones_initializer(Initializer):
    def sample(self, shape, rng):
        return np.ones(shape)


class constant_initializer(Initializer):
    def __init__(self, value=0.0):
        self.value = value

    def sample(self, shape, rng):
        return np.broadcast_to(np.asarray(self.value), shape)


class _RandomInitializer(Initializer):
    """An initializer that draws from a distribution; `draw` is shared with the random ops."""

    random = True

    def sample(self, shape, rng):
        return self.draw(rng, shape)

    def draw(self, rng, shape):
        raise NotImplementedError


class random_normal_initializer(_RandomInitializer):
    def __init__(self, mean=0.0, stddev=1.0, seed=None):
        self.mean, self.stddev, self.seed = mean, stddev, seed

    def draw(self, rng, shape):
        return rng.normal(self.mean, self.stddev, shape)


class truncated_normal_initializer(_RandomInitializer):
    """Normal samples redrawn until within two standard deviations of the mean."""

    def __init__(self, mean=0.0, stddev=1.0, seed=None):
        self.mean, self.stddev, self.seed = mean, stddev, seed

    def draw(self, rng, shape):
        return _truncated_normal(rng, self.mean, self.stddev, shape)


class random_uniform_initializer(_RandomInitializer):
    def __init__(self, minval=0.0, maxval=1.0, seed=None):
        self.minval, self.maxval, self.seed = minval, maxval, seed

    def draw(self, rng, shape):
        return rng.uniform(self.minval, self.maxval, shape)


class glorot_uniform_initializer(Initializer):
    """Uniform in +-sqrt(6 / (fan_in + fan_out)); TensorFlow's default for get_variable."""

    random = True

    def __init__(self, seed=None):
        self.seed = seed

    def sample(self, shape, rng):
        fan_in, fan_out = _fans(shape)
        limit = np.sqrt(6.0 / max(fan_in + fan_out, 1))
        return rng.uniform(-limit, limit, shape)


class glorot_normal_initializer(Initializer):
    random = True

    def __init__(self, seed=None):
        self.seed = seed

    def sample(self, shape, rng):
        fan_in, fan_out = _fans(shape)
        stddev = np.sqrt(2.0 / max(fan_in + fan_out, 1))
        return _truncated_normal(rng, 0.0, stddev, shape)


def _truncated_normal(rng, mean, stddev, shape):
    out = rng.normal(0.0, 1.0, shape)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.normal(0.0, 1.0, int(bad.sum()))
        bad = np.abs(out) > 2.0
    return mean + stddev * out


class InitialValue(Node):
    """A variable's initial value from an Initializer, drawn when the variable's initializer
    runs (not when the graph is built), the same each time: a process that never
    initializes the variable never holds it."""

    def __init__(self, initializer, shape, dtype, name=None):
        self.draw = initializer.bind(shape, dtype)
        super().__init__(name=name or "initial_value", shape=as_shape(shape),
                         dtype=as_dtype(dtype))

    def forward(self):
        return self.draw()


class RandomOp(Node):
    """Draws fresh random numbers each time it runs, from its own seeded generator."""

    def __init__(self, initializer, shape, dtype, name):
        shape = as_shape(shape)
        if shape is None or None in shape:
            raise ValueError(f"{name} needs a fully known shape, got {shape}")
        self.initializer = initializer
        super().__init__(name=name, shape=shape, dtype=as_dtype(dtype))
        self.rng = random_generator(initializer.seed, self.graph)

    def forward(self):
        return np.asarray(self.initializer.draw(self.rng, self.shape), dtype=self.dtype)


def random_normal(shape, mean=0.0, stddev=1.0, dtype=float32, seed=None, name=None):
    """A node of normal random numbers, drawn anew at each run."""
    return RandomOp(random_normal_initializer(mean, stddev, seed), shape, dtype,
                    name or "random_normal")


def truncated_normal(shape, mean=0.0, stddev=1.0, dtype=float32, seed=None, name=None):
    return RandomOp(truncated_normal_initializer(mean, stddev, seed), shape, dtype,
                    name or "truncated_normal")


def random_uniform(shape, minval=0.0, maxval=1.0, dtype=float32, seed=None, name=None):
    return RandomOp(random_uniform_initializer(minval, maxval, seed), shape, dtype,
                    name or "random_uniform")


def fixed_size_partitioner(num_shards, axis=0):
    """TF1's partitioner: `num_shards` row parts (see get_variable)."""
    if axis != 0:
        raise NotImplementedError("partitioners split variables by rows (axis 0) only")
    if not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"fixed_size_partitioner: num_shards must be at least 1, got "
                         f"{num_shards!r}")

    def partitions(shape, dtype):
        return [num_shards] + [1] * (len(shape) - 1)
    return partitions


def min_max_variable_partitioner(max_partitions=1, axis=0, min_slice_size=256 << 10,
                                 bytes_per_string_element=16):
    """TF1's partitioner: as many row parts as keep each at least `min_slice_size` bytes, at
    most `max_partitions`."""
    if axis != 0:
        raise NotImplementedError("partitioners split variables by rows (axis 0) only")

    def partitions(shape, dtype):
        total = int(np.prod(shape)) * as_dtype(dtype).itemsize
        count = max(1, min(max_partitions, shape[0] if shape else 1, total // min_slice_size))
        return [count] + [1] * (len(shape) - 1)
    return partitions


AUTO_REUSE = "auto_reuse"


class VariableScope:
    """A variable scope as get_variable_scope() returns it."""

    def __init__(self, name, reuse, initializer):
        self.name, self.reuse, self.initializer = name, reuse, initializer

    def reuse_variables(self):
        """From here to the end of the scope, get_variable shares existing variables."""
        self.reuse = True


def _scopes(graph):
    if not hasattr(graph, "variable_scopes"):
        graph.variable_scopes = [VariableScope("", False, None)]
    return graph.variable_scopes


def current_reuse(graph):
    return _scopes(graph)[-1].reuse


def current_initializer(graph):
    return _scopes(graph)[-1].initializer


def get_variable_scope():
    return _scopes(get_default_graph())[-1]


@contextlib.contextmanager
def variable_scope(name_or_scope=None, default_name=None, values=None, initializer=None,
                   reuse=None, dtype=None, **unsupported):
    """TF1's variable_scope: names what get_variable makes inside it (`scope/name`), and with
    `reuse=True` (or AUTO_REUSE, or after scope.reuse_variables()) gives back the variables
    made before under the same names. Reuse is inherited by inner scopes."""
    if unsupported:
        raise TypeError(f"variable_scope: {', '.join(sorted(unsupported))} not supported")
    graph = get_default_graph()
    scopes = _scopes(graph)
    if isinstance(name_or_scope, VariableScope):
        name = name_or_scope.name.split("/")[-1]
    elif name_or_scope is not None:
        name = str(name_or_scope)
    elif default_name is not None:
        taken = {v.name for v in graph.variables}
        prefix = "/".join(graph._name_stack + [default_name])
        count = 0
        name = default_name
        while any(t == prefix or t.startswith(prefix + "/") for t in taken):
            count += 1
            name = f"{default_name}_{count}"
            prefix = "/".join(graph._name_stack + [name])
    else:
        raise ValueError("variable_scope needs a name_or_scope or a default_name")
    inherited = scopes[-1].reuse
    scope = VariableScope("/".join(graph._name_stack + ([name] if name else [])),
                          reuse if reuse not in (None, False) else inherited,
                          initializer or scopes[-1].initializer)
    scopes.append(scope)
    if name:  # "" is the scope one is in (variable_scope("", reuse=True))
        graph._name_stack.append(name)
    try:
        yield scope
    finally:
        if name:
            graph._name_stack.pop()
        scopes.pop()


def get_variable(name, shape=None, dtype=float32, initializer=None, trainable=True,
                 partitioner=None, collections=None, **unsupported):
    """A new Variable named `name`: `initializer` (default glorot_uniform) gives its value,
    or is itself the value (an array or a number) when it is not an Initializer.

    `partitioner` (fixed_size_partitioner, min_max_variable_partitioner or any function of
    (shape, dtype) giving the parts per axis) still makes one Variable: the script sees it
    whole, and the parameter servers hold it in at least that many row parts."""
    if unsupported:
        raise TypeError(f"get_variable({name!r}): {', '.join(sorted(unsupported))} not "
                        "supported")
    graph = get_default_graph()
    full = "/".join(graph._name_stack + [name])
    existing = [v for v in graph.variables + graph.local_variables if v.name == full]
    reuse = current_reuse(graph)
    if existing:
        if not reuse:
            raise ValueError(f"variable {full!r} already exists in this graph; to share it, "
                             "get it inside variable_scope(..., reuse=True) (or "
                             "reuse=tf.AUTO_REUSE)")
        var = existing[0]
        if shape is not None and tuple(var.shape) != as_shape(shape):
            raise ValueError(f"variable {full!r} exists with shape {tuple(var.shape)}; it "
                             f"cannot be shared with shape {as_shape(shape)}")
        return var
    if reuse is True:
        raise ValueError(f"variable {full!r} does not exist, so reuse=True cannot share it; "
                         "create it first, or use reuse=tf.AUTO_REUSE")
    if initializer is None:
        initializer = current_initializer(graph) or glorot_uniform_initializer()
    if isinstance(initializer, Initializer):
        if shape is None:
            raise ValueError(f"get_variable({name!r}): a shape is needed with an initializer")
        with graph.name_scope(name):
            value = InitialValue(initializer, shape, dtype)
    else:
        value = np.asarray(initializer, dtype=as_dtype(dtype))
        if shape is not None and value.shape != as_shape(shape):
            raise ValueError(f"get_variable({name!r}): initial value of shape {value.shape} "
                             f"does not match shape {as_shape(shape)}")
    var = Variable(value, trainable=trainable, name=name, collections=collections)
    if partitioner is not None:
        counts = list(partitioner(tuple(var.shape), var.dtype))
        if any(int(c) != 1 for c in counts[1:]):
            raise NotImplementedError(f"get_variable({name!r}): parts along axes other than 0 "
                                      f"({counts})")
        if counts and int(counts[0]) > 1:
            var.partitions = int(counts[0])
    return var
