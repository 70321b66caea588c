"""A servable's graph to and from JSON: the inference subgraph pruned from a signature's
inputs to its outputs, its Variables frozen into constants and its embedding tables into
frozen tables, each node written generically (op class by registered name, name, inputs by
index, static shape and dtype, plain attributes).

An attribute is written as plain JSON (numbers, strings, bools, None, lists) or as a tagged
object: {"$tuple": [...]}, {"$dict": {...}}, {"$float": "nan"|"inf"|"-inf"},
{"$scalar": x, "dtype": name}, {"$dtype": name}, {"$slice": [start, stop, step]},
{"$ellipsis": true}, {"$numpy": name} (a numpy function from NUMPY_FUNCTIONS),
{"$node": index}, {"$array": key} (an array in constants.npz), {"$variable": name} (a frozen
Variable's value in variables.npz) and {"$table": name} (a frozen embedding table). Anything
else is refused when exporting, and any other tag when reading.
"""

import math

import numpy as np

from ..errors import DataLossError, InvalidArgumentError
from ..graph import Constant, Node, Placeholder, topological_order
from ..variables import Variable
from . import op_registry

# The numpy functions an attribute may hold, by name: pure array functions only.
NUMPY_FUNCTIONS = frozenset((
    "abs", "absolute", "add", "arctan", "ceil", "clip", "cos", "divide", "exp", "expm1",
    "floor", "log", "log1p", "maximum", "minimum", "multiply", "negative", "power", "reciprocal",
    "rint", "round", "sign", "sin", "sqrt", "square", "subtract", "tanh", "sum", "mean", "max",
    "min", "prod", "argmax", "argmin", "where", "logical_and", "logical_or", "logical_not",
    "logical_xor", "equal", "not_equal", "greater", "greater_equal", "less", "less_equal",
    "floor_divide", "mod", "cumsum", "sort", "argsort", "transpose", "reshape", "squeeze",
    "expand_dims", "tile", "concatenate", "stack"))
_BASE = frozenset(("graph", "inputs", "control_inputs", "_shape", "dtype", "name"))
_CONSTANT = "psflow.graph.Constant"
_PLACEHOLDER = "psflow.graph.Placeholder"
_TABLE = "psflow.saved_model.frozen_table.FrozenTable"


def prune(outputs, inputs):
    """The nodes `outputs` need, stopping at `inputs`, inputs before their users (data
    inputs only: a servable's outputs are functions of its inputs, so control dependencies,
    such as update ops, are left out)."""
    return topological_order(outputs, stop_at=inputs, control=False)


def serialize(nodes, inputs, arrays):
    """[node record] of `nodes` (as prune orders them). Variables become constants read from
    variables.npz and tables frozen tables; `arrays` (an ArraySink) takes the arrays of
    constants and attributes. InvalidArgumentError names a node that cannot be served and
    the attribute that cannot be written."""
    index = {node: i for i, node in enumerate(nodes)}
    inputs = set(inputs)
    records = []
    for node in nodes:
        record = {"op": None, "name": node.name, "inputs": [], "attrs": {},
                  "shape": _encode_shape(node.shape),
                  "dtype": None if node.dtype is None else np.dtype(node.dtype).name}
        if node in inputs:  # a placeholder, or an intermediate tensor the caller feeds
            record["op"] = _PLACEHOLDER
        elif isinstance(node, Variable) and node.is_table:
            record.update(op=_TABLE, attrs={"rows": {"$table": node.name}})
        elif isinstance(node, Variable):
            record.update(op=_CONSTANT, attrs={"value": {"$variable": node.name}})
        elif isinstance(node, Placeholder):
            raise InvalidArgumentError(
                f"cannot export: the outputs need placeholder {node.name!r}, which is not one "
                "of the signature's inputs")
        else:
            _check_servable(node)
            record["op"] = op_registry.name_of(node)
            record["inputs"] = [index[i] for i in node.inputs]
            record["attrs"] = {attr: _Encoder(node, attr, index, arrays).encode(value)
                               for attr, value in sorted(vars(node).items())
                               if attr not in _BASE}
        records.append(record)
    return records


def _check_servable(node):
    if getattr(node, "is_train_op", False) or type(node).executor is not Node.executor:
        raise InvalidArgumentError(
            f"cannot export node {node.name!r}: {type(node).__name__} changes state (an "
            "assignment, an initializer or a train op) and has no place in a servable")


def _encode_shape(shape):
    return None if shape is None else [None if d is None else int(d) for d in shape]


class ArraySink:
    """Collects the arrays a graph's records refer to as {"$array": key}."""

    def __init__(self):
        self.arrays = {}

    def add(self, array):
        key = f"a{len(self.arrays)}"
        self.arrays[key] = array
        return key


class _Encoder:
    def __init__(self, node, attr, index, arrays):
        self.node, self.attr, self.index, self.arrays = node, attr, index, arrays

    def refuse(self, value, why=""):
        raise InvalidArgumentError(
            f"cannot export node {self.node.name!r} ({type(self.node).__name__}): its "
            f"attribute {self.attr!r} holds {type(value).__name__} {value!r:.80}{why}, which a "
            "servable cannot store (numbers, strings, bools, None, tuples, lists, dicts, "
            "numpy dtypes and arrays only)")

    def encode(self, value):
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return value if math.isfinite(value) else {"$float": str(value)}
        if isinstance(value, np.generic) and value.dtype.kind in "biuf":
            return {"$scalar": self.encode(value.item()), "dtype": value.dtype.name}
        if isinstance(value, np.dtype) or (isinstance(value, type) and
                                           issubclass(value, np.generic)):
            return {"$dtype": np.dtype(value).name}
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in "biufcS":  # byte strings: a vocabulary
                self.refuse(value, " (an array of objects)")
            return {"$array": self.arrays.add(value)}
        if isinstance(value, tuple):
            return {"$tuple": [self.encode(v) for v in value]}
        if isinstance(value, list):
            return [self.encode(v) for v in value]
        if isinstance(value, dict):
            if not all(isinstance(k, str) for k in value):
                self.refuse(value, " (a dict with keys other than strings)")
            return {"$dict": {k: self.encode(v) for k, v in value.items()}}
        if isinstance(value, slice):
            return {"$slice": [self.encode(value.start), self.encode(value.stop),
                               self.encode(value.step)]}
        if value is Ellipsis:
            return {"$ellipsis": True}
        if isinstance(value, Node):
            if value not in self.index:
                self.refuse(value, " (a node outside the exported graph)")
            return {"$node": self.index[value]}
        name = getattr(value, "__name__", None)
        if callable(value) and name in NUMPY_FUNCTIONS and getattr(np, name, None) is value:
            return {"$numpy": name}
        return self.refuse(value)


def deserialize(records, graph, constants, variables, tables, where):
    """The nodes of `records` (see serialize) rebuilt in `graph`, without running any op's
    constructor: each gets its class from op_registry, its fields and decoded attributes.
    `constants` and `variables` are {key: array}, `tables` {name: TableRows}. DataLossError
    names `where` for anything malformed."""
    nodes = []
    taken = {node.name for node in graph.nodes}
    try:
        for position, record in enumerate(records):
            cls = op_registry.class_named(record["op"], where)
            node = cls.__new__(cls)
            name = record["name"]
            if not isinstance(name, str) or name in taken:
                raise DataLossError(f"{where}: node {position} has a bad or repeated name "
                                    f"{name!r}")
            decoder = _Decoder(nodes, constants, variables, tables, where)
            attrs = {k: decoder.decode(v) for k, v in record["attrs"].items()}
            if cls is Constant and "value" in attrs:
                attrs["value"] = np.asarray(attrs["value"])
            node.__dict__.update(attrs)
            node.graph = graph
            node.inputs = tuple(nodes[_index(i, position, where)] for i in record["inputs"])
            node.control_inputs = ()
            node.shape = _decode_shape(record["shape"], where)
            node.dtype = None if record["dtype"] is None else np.dtype(record["dtype"])
            node.name = name
            taken.add(name)
            graph._names[name] = graph._names.get(name, 0) + 1
            graph.add_node(node)
            nodes.append(node)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataLossError(f"{where}: malformed graph node: {exc!r}") from None
    return nodes


def _index(value, position, where):
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < position:
        raise DataLossError(f"{where}: node {position} names input {value!r}, which is not an "
                            "earlier node")
    return value


def _decode_shape(shape, where):
    if shape is None:
        return None
    if not isinstance(shape, list) or not all(
            d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 0)
            for d in shape):
        raise DataLossError(f"{where}: bad shape {shape!r}")
    return tuple(shape)


class _Decoder:
    def __init__(self, nodes, constants, variables, tables, where):
        self.nodes, self.where = nodes, where
        self.sources = {"$array": constants, "$variable": variables, "$table": tables}

    def decode(self, value):
        if value is None or isinstance(value, (bool, str, int, float)):
            return value
        if isinstance(value, list):
            return [self.decode(v) for v in value]
        if not isinstance(value, dict) or not value:
            raise DataLossError(f"{self.where}: bad attribute {value!r:.80}")
        tag = next(iter(value))
        body = value[tag]
        if tag == "$tuple":
            return tuple(self.decode(v) for v in body)
        if tag == "$dict":
            return {str(k): self.decode(v) for k, v in body.items()}
        if tag == "$float" and body in ("nan", "inf", "-inf"):
            return float(body)
        if tag == "$scalar":
            return np.dtype(value["dtype"]).type(self.decode(body))
        if tag == "$dtype":
            return np.dtype(body)
        if tag == "$slice":
            return slice(*(self.decode(v) for v in body))
        if tag == "$ellipsis":
            return Ellipsis
        if tag == "$numpy" and body in NUMPY_FUNCTIONS:
            return getattr(np, body)
        if tag == "$node":
            return self.nodes[_index(body, len(self.nodes), self.where)]
        if tag in self.sources:
            found = self.sources[tag].get(body)
            if found is None:
                raise DataLossError(f"{self.where}: {tag[1:]} {body!r} is not in the export")
            return found
        raise DataLossError(f"{self.where}: unknown attribute tag {tag!r}")
