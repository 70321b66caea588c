"""`VariableStore`: the contract between a session and what holds its variables' values.

A local Session holds them in this process (psflow.local_store.LocalVariableStore); a
DistributedSession on the parameter-server shards
(psflow.worker.distributed_store.DistributedStore). The engine's stateful nodes (Variable
reads, assignments, initializers, lookups, train ops) and the checkpoint savers call only
these methods on `session.store`, so one graph runs on either. tests/test_variable_store.py
checks that both stores provide every method with a compatible signature.
"""

from typing import Any, Protocol

import numpy as np


class VariableStore(Protocol):
    """What a session calls on its variable store. `var` is a psflow Variable (an
    EmbeddingVariable where the method says a table); values are numpy arrays."""

    def read(self, var: Any) -> np.ndarray:
        """The current value of `var`. FailedPreconditionError when it was never initialized.
        The array may be the store's own storage: callers must not write into it."""

    def assign(self, var: Any, value: Any) -> None:
        """Sets `var` to `value` (converted to the variable's dtype); InvalidArgumentError when
        the shape does not fit the variable's."""

    def read_rows(self, var: Any, indices: np.ndarray, train: bool = False) -> np.ndarray:
        """Rows `indices` (integers of any shape) of `var`, shaped `indices.shape +
        var.shape[1:]`, reading only those rows: what a lookup (`gather`) reads. For an
        embedding table `indices` are keys, and with `train` the rows of new keys are created
        (as the table's admission policy allows). InvalidArgumentError names an id out of
        range."""

    def dedup(self, ids: np.ndarray) -> Any:
        """The Dedup (unique ids, inverse, counts) of `ids`, computed once per run for the
        run's lookups and their gradients alike."""

    def init_table(self, var: Any) -> None:
        """Makes the empty table of embedding variable `var` (its rows come with lookups);
        a no-op where tables are made when the session starts."""

    def apply_gradients(self, rule: Any, grads_and_vars: Any, global_step: Any = None,
                        consistency: Any = None) -> None:
        """Applies update rule `rule` (a psflow.train.update_rules.UpdateRule) to each
        (gradient, Variable) of `grads_and_vars`; a gradient is an array of the variable's
        shape or IndexedSlices. The rule's slots are made at a variable's first update. With
        `global_step` (a Variable), the step advances by one. `consistency` is the train op's
        mode (psflow.train.consistency), None for the session's."""

    def save(self, checkpoint_dir: str, variables: Any, global_step: Any,
             max_to_keep: int, full_every: Any = None) -> str:
        """Writes a checkpoint of `variables` (values, slots and tables) at the step held by
        the `global_step` Variable (or given as an int) into `checkpoint_dir`, keeping the
        newest `max_to_keep`; returns the checkpoint's directory (see psflow.checkpoint). A
        distributed store writes a table's changes since the latest checkpoint (a delta) in
        all but one checkpoint of `full_every` (None: PSFLOW_CHECKPOINT_FULL_EVERY)."""

    def restore(self, state: Any, global_step: Any) -> None:
        """Sets a checkpoint's state: (global step, {Variable: value}, {(Variable, rule,
        slot): value}[, {table: {field: array}}]) as psflow.train.saver.checkpoint_state reads
        it; the `global_step` Variable (if not None) is set to the checkpoint's step."""
