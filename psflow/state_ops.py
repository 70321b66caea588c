"""Ops that change variables: assignment and initialization. They act through the variable
store of the session that runs them, so the same graph works locally and against a cluster."""

import numpy as np

from .graph import Node, get_default_graph


class Assign(Node):
    """Sets (`mode="set"`), adds to or subtracts from a variable; its value is the new value."""

    def __init__(self, var, value, mode="set", name=None):
        if mode not in ("set", "add", "sub"):
            raise ValueError(f"unknown assign mode {mode!r}")
        self.var, self.mode = var, mode
        super().__init__((value,), name=name or f"{var.name}/Assign", shape=var.shape,
                         dtype=var.dtype)

    def executor(self, session):
        store, var, mode = session.store_for(self.var), self.var, self.mode

        def run(value):
            if mode == "add":
                value = store.read(var) + value
            elif mode == "sub":
                value = store.read(var) - value
            store.assign(var, value)
            return store.read(var)
        return run


class InitializeVariables(Node):
    """Runs the initial values of a set of variables and stores them."""

    def __init__(self, variables, name=None):
        variables = list(variables)
        # embedding tables start empty: their initializer makes each row when first looked up
        self.tables = [v for v in variables if v.is_table]
        self.variables = [v for v in variables if not v.is_table]
        super().__init__([v.initial_value for v in self.variables],
                         name=name or "init", graph=get_default_graph() if not variables
                         else variables[0].graph)

    def executor(self, session):
        stores, variables = [session.store_for(v) for v in self.variables], self.variables
        store, tables = session.store, self.tables

        def run(*values):
            for table in tables:
                store.init_table(table)
            for var_store, var, value in zip(stores, variables, values, strict=False):
                initialize = getattr(var_store, "initialize_value", var_store.assign)
                initialize(var, np.array(value, dtype=var.dtype))
        return run


class Group(Node):
    """Runs its inputs for their effects; has no value (`psflow.group`, `no_op`)."""

    def __init__(self, inputs, name=None):
        super().__init__(inputs, name=name or "group_deps",
                         graph=None if inputs else get_default_graph())

    def forward(self, *values):
        return None


def variables_initializer(var_list, name="init"):
    """An op that initializes the given variables."""
    return InitializeVariables(var_list, name=name)


def global_variables_initializer():
    """An op that initializes every variable of the default graph."""
    return InitializeVariables(get_default_graph().variables, name="init")


def group(*inputs, name=None):
    """An op that runs all `inputs` (each once) and has no value."""
    return Group(inputs, name=name)


def no_op(name=None):
    return Group((), name=name or "NoOp")
