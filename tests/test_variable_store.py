"""The store contract: the local and the distributed variable store both provide every method
of psflow.variable_store.VariableStore, each accepting every call the protocol allows."""

import inspect

import pytest

from psflow.local_store import LocalVariableStore
from psflow.variable_store import VariableStore
from psflow.worker.distributed_store import DistributedStore

PROTOCOL_METHODS = sorted(name for name, member in vars(VariableStore).items()
                          if inspect.isfunction(member) and not name.startswith("_"))


def test_the_protocol_names_what_a_session_calls():
    assert PROTOCOL_METHODS == ["apply_gradients", "assign", "dedup", "init_table", "read",
                                "read_rows", "restore", "save"]


def _incompatibilities(wanted, given):
    """Why a method with signature `given` cannot take every call `wanted` allows."""
    problems = []
    params = dict(given.parameters)
    for name, param in wanted.parameters.items():
        have = params.pop(name, None)
        if have is None:
            problems.append(f"has no parameter {name!r}")
        elif have.kind != param.kind:
            problems.append(f"takes {name!r} as {have.kind.description}, not "
                            f"{param.kind.description}")
        elif param.default is not inspect.Parameter.empty and \
                have.default is inspect.Parameter.empty:
            problems.append(f"requires {name!r}, which the protocol lets callers omit")
    for name, extra in params.items():
        if extra.default is inspect.Parameter.empty and \
                extra.kind not in (inspect.Parameter.VAR_POSITIONAL,
                                   inspect.Parameter.VAR_KEYWORD):
            problems.append(f"requires {name!r}, which the protocol does not pass")
    return problems


@pytest.mark.parametrize("store", [LocalVariableStore, DistributedStore],
                         ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("method", PROTOCOL_METHODS)
def test_each_store_provides_the_method_with_a_compatible_signature(store, method):
    implementation = getattr(store, method, None)
    assert callable(implementation), f"{store.__name__} has no method {method}"
    wanted = inspect.signature(getattr(VariableStore, method))
    problems = _incompatibilities(wanted, inspect.signature(implementation))
    assert not problems, f"{store.__name__}.{method}: " + "; ".join(problems)


def test_the_check_catches_a_drifted_signature():
    def read_rows(self, var, ids, train=False):  # a renamed parameter
        pass

    def restore(self, state, global_step, shards):  # a new required parameter
        pass

    assert _incompatibilities(inspect.signature(VariableStore.read_rows),
                              inspect.signature(read_rows)) == \
        ["has no parameter 'indices'", "requires 'ids', which the protocol does not pass"]
    assert _incompatibilities(inspect.signature(VariableStore.restore),
                              inspect.signature(restore)) == \
        ["requires 'shards', which the protocol does not pass"]
