"""The embedding tables of one shard: the rows of the keys that hash here, each table a
psflow.embedding_table.EmbeddingTable (the storage a local session uses too) under its own
lock, with a version and the shard's counters."""

import secrets
import threading
import time

import numpy as np

from psflow.embedding_table import EmbeddingTable
from psflow.errors import InvalidArgumentError, NotFoundError, ResourceExhaustedError
from psflow.graph import format_shape as _shape_text
from psflow.row_init import INITIALIZERS
from psflow.table_changes import ChangeClock
from psflow.table_policies import eviction_due
from .dense_variables import MAX_REPLY_BYTES


class _Table:
    """An embedding table as this shard holds it: the rows of the keys that hash here, under
    `lock`. `spec` is what it was declared with (name, dim, dtype, initializer, filter_freq,
    steps_to_live, max_rows); `clock` the shard's ChangeClock."""

    def __init__(self, spec, clock):
        name, dim, dtype, initializer, filter_freq, steps_to_live, max_rows = spec
        self.spec = spec
        self.name = name
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self.table = EmbeddingTable(name, dim, dtype, dict(initializer), filter_freq,
                                    steps_to_live or None, max_rows or None, clock)
        self.lock = threading.Lock()
        self.version = 0
        self.evicted_at = 0  # the global step of the last eviction pass
        self.pushes = 0
        self.pulls = 0

    def apply(self, rule, grad, version, global_step):
        """Applies `grad` (rows by key) with `rule` under the lock, then evicts the stale rows
        once every steps_to_live global steps; a table's gradients have no staleness (0)."""
        with self.lock:
            table = self.table
            table.apply(rule, grad.indices, grad.values, global_step=global_step)
            self.version += 1
            if eviction_due(table.steps_to_live, global_step, self.evicted_at):
                table.evict(global_step)
                self.evicted_at = global_step
        return 0


class ShardTables:
    """The shard's tables by name, and the newest global step a worker told the shard (`step`:
    rows are created, updated and evicted by it). Every change to any of them takes the next
    sequence number of `clock` (see psflow.table_changes)."""

    def __init__(self, shard, registry_lock, counters):
        self.shard = shard
        self.clock = ChangeClock()
        # Names this process's sequence numbers: a delta is taken only against a checkpoint
        # of the same incarnation (a restarted shard counts from 1 again).
        self.incarnation = secrets.randbits(64) or 1
        self.counters = counters
        self.held = {}  # name -> _Table
        self.step = 0
        self._registry_lock = registry_lock

    def note_step(self, global_step):
        if global_step and global_step > self.step:
            self.step = int(global_step)

    def get(self, name):
        table = self.held.get(name)
        if table is None:
            raise NotFoundError(f"no embedding table {name!r} on parameter server "
                                f"{self.shard}; declare it first")
        return table

    def declare(self, specs, variables):
        """Declares embedding tables, dicts with name, dim, dtype, initializer ({"kind": ...,
        parameters}), filter_freq, steps_to_live, max_rows; `variables` holds the names of the
        shard's variables, which no table may take. Re-declaring alike is a no-op; differently, an
        InvalidArgumentError naming the table (and nothing of the call is declared)."""
        checked = {}
        for spec in specs:
            name = spec["name"]
            if not name:
                raise InvalidArgumentError("an embedding table needs a name")
            dim = int(spec["dim"])
            if dim < 1:
                raise InvalidArgumentError(f"embedding table {name!r}: dimension {dim}; it "
                                           "must be positive")
            try:
                dtype = np.dtype(spec["dtype"])
            except TypeError:
                raise InvalidArgumentError(f"embedding table {name!r}: unknown dtype "
                                           f"{spec['dtype']!r}") from None
            if dtype.kind != "f":
                raise InvalidArgumentError(f"embedding table {name!r}: dtype {dtype.name}; "
                                           "tables hold floats")
            initializer = dict(spec["initializer"])
            if initializer.get("kind") not in INITIALIZERS:
                raise InvalidArgumentError(f"embedding table {name!r}: unknown initializer "
                                           f"{initializer.get('kind')!r}; known: "
                                           f"{', '.join(INITIALIZERS)}")
            max_rows = int(spec.get("max_rows") or 0)
            if max_rows < 0:
                raise InvalidArgumentError(f"embedding table {name!r}: max_rows {max_rows}; "
                                           "it must be positive (0: no cap)")
            key = (name, dim, dtype.name, tuple(sorted(initializer.items())),
                   int(spec.get("filter_freq") or 0), int(spec.get("steps_to_live") or 0),
                   max_rows)
            if name in checked and checked[name] != key:
                raise InvalidArgumentError(f"embedding table {name!r} declared twice, "
                                           "differently, in one call")
            checked[name] = key
        with self._registry_lock:
            for name, key in checked.items():
                if name in variables:
                    raise InvalidArgumentError(f"{name!r} is a variable on parameter server "
                                               f"{self.shard}; it cannot also be a table")
                held = self.held.get(name)
                if held is not None and held.spec != key:
                    raise InvalidArgumentError(
                        f"embedding table {name!r} is already declared as dim {held.dim} "
                        f"{held.dtype.name} with {dict(held.spec[3])}, filter_freq "
                        f"{held.spec[4]}, steps_to_live {held.spec[5]}, max_rows "
                        f"{held.spec[6]}; it cannot be redeclared as dim {key[1]} "
                        f"{key[2]} "
                        f"with {dict(key[3])}, filter_freq {key[4]}, steps_to_live {key[5]}, "
                        f"max_rows {key[6]}")
            for name, key in checked.items():
                if name not in self.held:
                    self.held[name] = _Table(key, self.clock)

    def lookup_keys(self, selections, global_step=0):
        """[(name, version, rows)] for selections [(table name, int64 keys, counts or None,
        train)] (see EmbeddingTable.lookup). Only a training lookup notes `global_step`: a read
        changes nothing, so that the replicas of a chain, which apply only the writes, keep
        the same steps as the head that also answers the reads."""
        if any(train for _, _, _, train in selections):
            self.note_step(global_step)
        out, looked = [], []
        size = 0
        for name, keys, counts, train in selections:
            held = self.get(name)
            looked.append(held)
            if keys.dtype.kind not in "iu" or keys.ndim != 1:
                raise InvalidArgumentError(f"keys of table {name!r} must be a 1-D integer "
                                           f"tensor, got {keys.dtype.name} "
                                           f"{_shape_text(keys.shape)}")
            if counts is not None and (counts.shape != keys.shape or counts.dtype.kind != "i"
                                       or (counts.size and counts.min() < 0)):
                raise InvalidArgumentError(f"counts of the keys of table {name!r} must be "
                                           "non-negative integers, one per key")
            size += keys.size * held.dim * held.dtype.itemsize
            if size > MAX_REPLY_BYTES:
                raise ResourceExhaustedError(f"the rows asked for hold {size} bytes; one "
                                             f"reply carries at most {MAX_REPLY_BYTES}")
            with held.lock:
                rows = held.table.lookup(keys, counts, train=train, global_step=self.step)
                out.append((name, held.version, rows))
        self.counters.count_pulls(size, looked)
        return out

    def evict(self, global_step=None):
        """Evicts the stale rows of every table with steps_to_live; returns how many."""
        step = self.step if global_step is None else global_step
        evicted = 0
        for held in list(self.held.values()):
            with held.lock:
                evicted += held.table.evict(step)
                held.evicted_at = step
        return evicted

    def load(self, name, fields):
        """Adds a checkpoint's rows (fields as EmbeddingTable.state gives them) to a table."""
        held = self.get(name)
        with held.lock:
            held.table.load(fields)
            held.version += 1

    def remove_keys(self, name, keys):
        """Removes the rows of `keys` from table `name` (a copy's removed keys)."""
        held = self.get(name)
        with held.lock:
            held.table.remove_keys(keys)
            held.version += 1

    def add_to(self, contents, evict=True):
        """Adds each table's state to `contents` (a psflow.checkpoint.ShardContents), copied a
        chunk of rows at a time under its table's lock (training goes on between chunks), after
        evicting its stale rows (stale rows go at checkpoint time, unless not `evict`: a
        replica of a chain changes only through the writes of its log); returns the longest a
        table was held at once."""
        pause = 0.0
        for name, held in list(self.held.items()):
            if evict:
                with held.lock:
                    held.table.evict(self.step)
            contents.tables[name], longest = held.table.copy_state(held.lock)
            pause = max(pause, longest)
        return pause

    def add_changes_to(self, contents, since, evict=True):
        """Adds to `contents` each table's rows changed or removed after sequence `since`
        (EmbeddingTable.changes_since with their state, and the removed keys as the field
        "removed"), after evicting its stale rows (as add_to); returns the longest a table
        was held.
        ChangesLost when a table no longer knows its removals back to `since`."""
        pause = 0.0
        for name, held in list(self.held.items()):
            with held.lock:
                started = time.monotonic()
                if evict:
                    held.table.evict(self.step)
                changes = held.table.changes_since(since, with_state=True)
                pause = max(pause, time.monotonic() - started)
            contents.tables[name] = dict(changes.state, removed=changes.removed)
        return pause

    def stats(self):
        """{table name: {"rows", "bytes", "created", "filtered", "evicted",
        "dropped_gradients"}}."""
        out = {}
        for name, held in list(self.held.items()):
            with held.lock:
                out[name] = {"rows": len(held.table), "bytes": held.table.nbytes(),
                             **held.table.stats}
        return out

    def counters_by_table(self):
        """{table name: (gradients received, pulls answered)}."""
        with self._registry_lock:
            held = list(self.held.values())
        return {t.name: (t.pushes, t.pulls) for t in held}
