"""The op classes a servable may name: psflow's own graph node classes, found in the engine's
modules by walking them, keyed by qualified name. Nothing else is ever looked up, so reading a
servable never imports a module or calls a function it names."""

import functools
import sys

from .. import (
    array_ops,
    categorical_ops,
    clip_ops,
    comparison_ops,
    conv_ops,
    elementwise,
    embedding_ops,
    embedding_variable,
    graph,
    initializers,
    math_ops,
    nn_ops,
    reduction_ops,
    shape_ops,
    sparse_ops,
    state_ops,
    string_ops,
    string_split,
    variables,
)
from ..errors import DataLossError, InvalidArgumentError
from ..graph import Node
from . import frozen_table

# The modules that define the ops a forward pass runs (the engine's op layers, and the frozen
# table of this package); runtimes, tests and user code are never searched.
_OP_MODULES = (graph, elementwise, math_ops, reduction_ops, comparison_ops, shape_ops,
               array_ops, nn_ops, conv_ops, clip_ops, state_ops, sparse_ops, embedding_ops,
               string_ops, string_split, categorical_ops, variables, embedding_variable,
               initializers, frozen_table)


@functools.cache
def op_classes():
    """{qualified name: Node subclass} of every op class defined in the engine's op modules,
    stateful ones (variables, assignments, initializers: their own `executor`) left out."""
    seen = {}
    for module in _OP_MODULES:
        for attr, value in vars(module).items():
            if isinstance(value, type) and issubclass(value, Node) and value not in seen \
                    and value is not Node and value.executor is Node.executor:
                seen[value] = _qualified(value, module, attr)
    names = {}
    for cls, name in seen.items():
        if names.setdefault(name, cls) is not cls:
            raise RuntimeError(f"two op classes are named {name}")
    return names


def _qualified(cls, module, attr):
    """The class's module and name where it is defined; a class made by a factory (say
    elementwise.unary_op_class) is named after the module that holds it."""
    home = sys.modules.get(cls.__module__)
    if home is not None and getattr(home, cls.__qualname__, None) is cls:
        return f"{cls.__module__}.{cls.__qualname__}"
    return f"{module.__name__}.{attr}"


@functools.cache
def _names_by_class():
    return {cls: name for name, cls in op_classes().items()}


def name_of(node):
    """The registered name of `node`'s class; InvalidArgumentError for a class outside it."""
    name = _names_by_class().get(type(node))
    if name is None:
        raise InvalidArgumentError(
            f"cannot export node {node.name!r}: its op class {type(node).__qualname__} "
            f"(module {type(node).__module__}) is not one of psflow's ops")
    return name


def class_named(name, where):
    """The op class registered as `name`; DataLossError naming `where` otherwise."""
    cls = op_classes().get(name) if isinstance(name, str) else None
    if cls is None:
        raise DataLossError(f"{where}: unknown op class {name!r} (a servable may name only "
                            "psflow's own ops)")
    return cls
