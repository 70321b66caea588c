"""The variable store of a local session: Variable values, optimizer slots and embedding
tables held in this process. A distributed session replaces it with
psflow.worker's store, which keeps the same interface against the parameter servers."""

import os
import threading

import numpy as np

from . import checkpoint
from .embedding_table import EmbeddingTable
from .errors import FailedPreconditionError, InvalidArgumentError
from .key_index import RunDedups
from .shapes import format_shape, shape_compatible
from .train.update_rules import checked_slots_by_variable


class LocalVariableStore:
    """Variable values and optimizer slots held in this process.

    The interface (read, assign, apply_gradients) is what a distributed session replaces with
    calls to parameter servers.
    """

    def __init__(self):
        self.values = {}
        self.slots = {}  # variable -> {update rule name: {slot name: array}}
        self.tables = {}  # embedding variable -> EmbeddingTable
        self.step = 0  # the global step of the last update (for the tables' eviction)
        self._lock = threading.Lock()
        self._runs = threading.local()  # this thread's run: .dedups, its lookups' RunDedups

    def start_run(self):
        """A run begins: forget the last run's deduplicated ids."""
        self._run_dedups().clear()

    def dedup(self, ids):
        """The Dedup of a lookup's ids, computed once per run for its lookups and gradients."""
        return self._run_dedups()(ids)

    def _run_dedups(self):
        dedups = getattr(self._runs, "dedups", None)
        if dedups is None:
            dedups = self._runs.dedups = RunDedups()
        return dedups

    def read(self, var):
        try:
            return self.values[var]
        except KeyError:
            raise FailedPreconditionError(
                f"attempting to use uninitialized variable {var.name!r}: run "
                "psflow.global_variables_initializer() (or the variable's initializer) "
                "first") from None

    def is_initialized(self, var):
        return var in self.tables if var.is_table else var in self.values

    def init_table(self, var):
        """An empty table for embedding variable `var` (rows come with lookups)."""
        spec = var.spec()
        self.tables[var] = EmbeddingTable(spec["name"], spec["dim"], spec["dtype"],
                                          spec["initializer"], spec["filter_freq"],
                                          spec["steps_to_live"], spec.get("max_rows"))

    def _table(self, var):
        table = self.tables.get(var)
        if table is None:
            raise FailedPreconditionError(
                f"attempting to use uninitialized embedding table {var.name!r}: run "
                "psflow.global_variables_initializer() first")
        return table

    def read_rows(self, var, indices, train=False):
        """Rows `indices` (any integer shape) of `var`: what a lookup reads. For an
        embedding table, `indices` are keys, and a training run creates their rows."""
        if var.is_table:
            found = self.dedup(np.asarray(indices))
            with self._lock:
                rows = self._table(var).lookup(found.unique, found.counts(), train=train,
                                               global_step=self.step)
            return rows[found.inverse].reshape(np.shape(indices) + (var.embedding_dim,))
        value = self.read(var)
        check_rows(var, indices, value.shape[0])
        return np.take(value, indices, axis=0)

    def assign(self, var, value):
        value = np.array(value, dtype=var.dtype)  # an owned copy: later updates are in place
        if not shape_compatible(var.shape, value.shape):
            raise InvalidArgumentError(
                f"cannot assign a value of shape {format_shape(value.shape)} to variable "
                f"{var.name!r} of shape {format_shape(var.shape)}")
        self.values[var] = value

    def apply_gradients(self, rule, grads_and_vars, global_step=None, consistency=None):
        """Applies `rule` (an UpdateRule of psflow.train.update_rules) to each variable in
        place, then adds one to `global_step` if given. In one process every consistency
        mode is this: a step's gradients come from the one replica there is."""
        with self._lock:
            if global_step is not None:
                self.step = int(self.read(global_step))
            for grad, var in grads_and_vars:
                if var.is_table:
                    self._apply_to_table(rule, grad, var)
                    continue
                value = self.read(var)
                rule.apply(value, grad, rule.slots_of(self.slots.setdefault(var, {}), value))
            if global_step is not None:
                step = self.read(global_step)
                step += 1

    def _apply_to_table(self, rule, grad, var):
        keys = np.asarray(grad.indices, dtype=np.int64).reshape(-1)
        values = np.asarray(grad.values).reshape(keys.size, var.embedding_dim)
        found = self.dedup(np.asarray(grad.indices))
        self._table(var).apply(rule, found.unique, found.sum_rows(values),
                               global_step=self.step)

    # -- checkpoints: the same interface as the distributed store's ------------------------
    def save(self, checkpoint_dir, variables, global_step, max_to_keep, full_every=None):
        """Writes a checkpoint of `variables` (their values and slots) and the value of the
        `global_step` Variable as one shard file, every row of its tables (`full_every` is
        for the distributed store's deltas); returns its directory."""

        def write(directory):
            contents, parts = checkpoint.ShardContents(), {}
            for var in variables:
                if var not in self.values:
                    continue
                contents.add(var.name, self.values[var], self.slots.get(var, {}))
                parts[var.name] = [var.name, 0, int(var.shape[0]) if var.shape else 0]
            if isinstance(global_step, (int, np.integer)):  # a Saver's step in a graph without one
                step = int(global_step)
            else:
                step = int(self.values[global_step]) if global_step in self.values else 0
            for var in variables:
                if var in self.tables:
                    table = self.tables[var]
                    table.evict(step)  # stale rows go at checkpoint time
                    contents.tables[var.name] = table.state()
            from .data import stream_state  # here: psflow.data imports this module's users
            positions = stream_state.consumed()[1]  # before the values: see followed_files
            digest = contents.write(os.path.join(directory, "shard-0.npz"), step)
            shards = [{"file": "shard-0.npz", "sha256": digest, "parts": parts}]
            return step, shards, checkpoint.variable_specs(
                [v for v in variables if v.name in contents.values or v.name in contents.tables]
            ), positions

        return checkpoint.write_checkpoint(checkpoint_dir, write, max_to_keep)

    def restore(self, state, global_step):
        """Sets a checkpoint's state: (global step, {Variable: value},
        {(Variable, rule, slot): value}, tables, input positions) (see
        psflow.train.saver.latest_state)."""
        step, values, slots = state[:3]
        if len(state) > 4:
            from .data import stream_state
            stream_state.resume_from(state[4])
        for var, fields in (state[3] if len(state) > 3 else {}).items():
            self.init_table(var)
            self.tables[var].load(fields)
        checked = checked_slots_by_variable(slots)
        for var, value in values.items():
            self.assign(var, value)
        for (var, rule), rule_slots in checked.items():
            self.slots.setdefault(var, {})[rule] = rule_slots
        if global_step is not None:
            self.assign(global_step, np.int64(step))


def check_rows(var, indices, rows):
    """InvalidArgumentError naming `var`, the first id out of [0, rows) and the row count."""
    if indices.size and (indices.dtype.kind not in "iu" or indices.min() < 0
                         or indices.max() >= rows):
        bad = indices[(indices < 0) | (indices >= rows)].reshape(-1)
        raise InvalidArgumentError(
            f"lookup in {var.name!r}: id {bad[0] if bad.size else indices.reshape(-1)[0]} is "
            f"out of range; the table has {rows} rows")
