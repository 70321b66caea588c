"""The variables of one parameter-server shard, as a plain object: arrays in, arrays out (no
gRPC and no wire format here; the servicer translates).

Each variable has its own lock: pushes to different variables run in parallel, pushes to the
same variable are applied one after the other and none is lost. Update rules are those of
psflow.train.update_rules, applied in place, so the shard does exactly what local training
does.

Dtype rules for pushed gradients: a gradient must be floating point, like the variable it
updates (integer variables take no gradients). A float gradient of another width (say float64
for a float32 variable) is cast to the variable's dtype before the rule runs, so the slots and
the arithmetic stay in the variable's dtype; an integer or bool gradient is refused.

Staleness: each gradient's staleness is the variable's version when the gradient arrives minus
the version it was computed from (PushResponse.staleness). The histogram counts gradients by
staleness; for a push that advances the global step it records, per gradient, the global steps
that passed since the worker's pull instead (the proto's PushRequest.global_step).

A push may carry an id (worker, incarnation, sequence, index). A push whose id the shard has
seen recently is not applied again: it gets the first one's answer, so a retry after a lost
reply, or a step run again after another shard restarted, never applies a gradient twice.
Restoring a checkpoint forgets the ids, since the state they changed is gone.
"""

import bisect
import collections
import errno
import inspect
import logging
import math
import os
import threading
import time

import numpy as np

from psflow import checkpoint
from psflow.errors import (FailedPreconditionError, InvalidArgumentError, NotFoundError,
                           PermissionDeniedError, ResourceExhaustedError)
from psflow.embedding_table import INITIALIZERS, EmbeddingTable
from psflow.indexed_slices import IndexedSlices
from psflow.shapes import format_shape as _shape_text
from psflow.proto.codec import MAX_DIMS, MAX_MESSAGE_BYTES
from psflow.train.update_rules import RULES, UpdateRule, checked_slots

from .membership import Membership
from .sync import STEP_TIMEOUT_S, SyncState

log = logging.getLogger(__name__)

STALENESS_BUCKETS = 32
# Distinct rule specs kept; a decaying learning rate makes a new spec every step.
RULE_CACHE_SIZE = 64
# Room for the tensors of one reply, below gRPC's message limit.
MAX_REPLY_BYTES = MAX_MESSAGE_BYTES - 16 * 1024 * 1024
# Upper bounds (seconds) of the buckets of the apply-time histogram (psflow.ps.metrics).
APPLY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, math.inf)
# Push ids remembered for retries: a retry comes within seconds, long before this many more
# pushes arrive.
PUSH_IDS_KEPT = 4096

# The answer to a push: each gradient's staleness, the global step after it (-1 on shards
# that do not hold it), whether it was dropped (sync: too late), and the step decision it took
# part in (sync, shard 0: (step, workers)) or None.
PushResult = collections.namedtuple("PushResult", "staleness global_step dropped decision")


class _Variable:
    __slots__ = ("name", "dtype", "shape", "value", "slots", "version", "lock", "pushes",
                 "pulls")

    def __init__(self, name, dtype, shape):
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.value = None
        self.slots = {}  # rule name -> that rule's slots, made at its first push
        self.version = 0
        self.lock = threading.Lock()
        self.pushes = 0  # gradients received and pulls answered, for the metrics
        self.pulls = 0


class _Table:
    """An embedding table as this shard holds it: the rows of the keys that hash here, under
    `lock`. `spec` is what it was declared with (name, dim, dtype, initializer, filter_freq,
    steps_to_live)."""

    def __init__(self, spec):
        name, dim, dtype, initializer, filter_freq, steps_to_live = spec
        self.spec = spec
        self.name = name
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self.table = EmbeddingTable(name, dim, dtype, dict(initializer), filter_freq,
                                    steps_to_live or None)
        self.lock = threading.Lock()
        self.version = 0
        self.evicted_at = 0  # the global step of the last eviction pass
        self.pushes = 0
        self.pulls = 0


class ShardStore:
    """Variables, optimizer slots, the global step (held by shard 0), counters and worker
    membership of one shard. Every method is safe to call from many threads."""

    def __init__(self, shard=0, num_workers=1, allow_nonfinite=False, checkpoint_root=None):
        """`allow_nonfinite`: apply gradients holding NaN or Inf instead of refusing them.
        `checkpoint_root`: the folder that `save` may write in (below it, anywhere), or
        several separated by os.pathsep; without one the shard writes no checkpoint."""
        self.members = Membership(num_workers)
        roots = [os.path.realpath(r) for r in str(checkpoint_root or "").split(os.pathsep) if r]
        self.checkpoint_roots = roots
        self.checkpoint_root = os.pathsep.join(roots) or None
        self.allow_nonfinite = allow_nonfinite
        self.nonfinite = 0  # gradients refused for holding NaN or Inf
        self.shard = shard
        self.num_workers = num_workers
        self.started = time.monotonic()
        self._variables = {}
        self._tables = {}
        self.table_step = 0  # the newest global step a worker told this shard (for tables)
        self._registry_lock = threading.Lock()
        # Notified whenever variables get values (and on close): WaitInitialized sleeps on it.
        self._initialized = threading.Condition(self._registry_lock)
        self._closed = False
        self._rules = collections.OrderedDict()
        self._rules_lock = threading.Lock()
        self._step_lock = threading.Lock()
        self.global_step = 0
        self._stats_lock = threading.Lock()
        self.pushes = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        self.staleness = [0] * STALENESS_BUCKETS
        self.pulls = 0  # variables and tables answered with
        self.apply_buckets = [0] * len(APPLY_BUCKETS_S)  # pushes applied, by time taken
        self.apply_seconds = 0.0
        self.checkpoints = 0  # shard files written, their total and last time and size
        self.checkpoint_seconds = 0.0
        self.last_checkpoint = (0.0, 0)
        self._push_ids = collections.OrderedDict()  # push id -> _Answer
        self._push_ids_lock = threading.Lock()
        self.sync = SyncState(self)
        # with_values(share=True): the last answer, for the same values asked again. `writes`
        # counts the writes that keep a variable's version (an initializer's overwrite).
        self.writes = 0
        self._shared = (None, None)

    @property
    def holds_global_step(self):
        return self.shard == 0

    @property
    def all_done(self):
        """An Event set once every worker has reported done."""
        return self.members.all_done

    def reported_global_step(self):
        """The global step as replies carry it: -1 on shards that do not hold it."""
        return self.global_step if self.holds_global_step else -1

    def set_global_step(self, step):
        with self._step_lock:
            self.global_step = int(step)

    # -- variables -------------------------------------------------------------------------
    def declare(self, specs):
        """Declares (name, dtype, shape) triples; returns the names that already have values.
        Re-declaring alike is a no-op; declaring differently is an InvalidArgumentError (and
        then nothing of the call is declared)."""
        checked = {}
        for name, dtype, shape in specs:
            if not name:
                raise InvalidArgumentError("a variable needs a name")
            try:
                dtype = np.dtype(dtype)
            except TypeError:
                raise InvalidArgumentError(f"variable {name!r}: unknown dtype {dtype!r}") from None
            shape = tuple(int(d) for d in shape)
            if len(shape) > MAX_DIMS:
                raise InvalidArgumentError(f"variable {name!r}: {len(shape)} dimensions; at most "
                                           f"{MAX_DIMS} are supported")
            if any(d < 0 for d in shape):
                raise InvalidArgumentError(f"variable {name!r}: negative dimension in shape "
                                           f"{_shape_text(shape)}")
            if name in checked and checked[name] != (dtype, shape):
                self._conflict(name, *checked[name], dtype, shape)
            checked[name] = (dtype, shape)
        initialized = []
        with self._registry_lock:
            for name, (dtype, shape) in checked.items():
                var = self._variables.get(name)
                if var is not None and (var.dtype != dtype or var.shape != shape):
                    self._conflict(name, var.dtype, var.shape, dtype, shape)
            for name, (dtype, shape) in checked.items():
                var = self._variables.get(name)
                if var is None:
                    self._variables[name] = _Variable(name, dtype, shape)
                elif var.value is not None:
                    initialized.append(name)
        return initialized

    def declare_tables(self, specs):
        """Declares embedding tables, dicts with name, dim, dtype, initializer ({"kind": ...,
        parameters}), filter_freq, steps_to_live. Re-declaring alike is a no-op; differently,
        an InvalidArgumentError naming the table (and nothing of the call is declared)."""
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
            key = (name, dim, dtype.name, tuple(sorted(initializer.items())),
                   int(spec.get("filter_freq") or 0), int(spec.get("steps_to_live") or 0))
            if name in checked and checked[name] != key:
                raise InvalidArgumentError(f"embedding table {name!r} declared twice, "
                                           "differently, in one call")
            checked[name] = key
        with self._registry_lock:
            for name, key in checked.items():
                if name in self._variables:
                    raise InvalidArgumentError(f"{name!r} is a variable on parameter server "
                                               f"{self.shard}; it cannot also be a table")
                held = self._tables.get(name)
                if held is not None and held.spec != key:
                    raise InvalidArgumentError(
                        f"embedding table {name!r} is already declared as dim {held.dim} "
                        f"{held.dtype.name} with {dict(held.spec[3])}, filter_freq "
                        f"{held.spec[4]}, steps_to_live {held.spec[5]}; it cannot be "
                        f"redeclared as dim {key[1]} {key[2]} with {dict(key[3])}, filter_freq "
                        f"{key[4]}, steps_to_live {key[5]}")
            for name, key in checked.items():
                if name not in self._tables:
                    self._tables[name] = _Table(key)

    def _get_table(self, name):
        table = self._tables.get(name)
        if table is None:
            raise NotFoundError(f"no embedding table {name!r} on parameter server "
                                f"{self.shard}; declare it first")
        return table

    def _note_step(self, global_step):
        if global_step and global_step > self.table_step:
            self.table_step = int(global_step)

    def lookup_keys(self, selections, global_step=0):
        """[(name, version, rows)] for selections [(table name, int64 keys, counts or None,
        train)] (see EmbeddingTable.lookup)."""
        self._note_step(global_step)
        out, looked = [], []
        size = 0
        for name, keys, counts, train in selections:
            held = self._get_table(name)
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
                rows = held.table.lookup(keys, counts, train=train,
                                         global_step=self.table_step)
                out.append((name, held.version, rows))
        with self._stats_lock:
            self.bytes_sent += size
            self._count_pulls(looked)
        return out

    def table_stats(self):
        """{table name: {"rows", "bytes", "created", "filtered", "evicted",
        "dropped_gradients"}}."""
        out = {}
        for name, held in list(self._tables.items()):
            with held.lock:
                out[name] = {"rows": len(held.table), "bytes": held.table.nbytes(),
                             **held.table.stats}
        return out

    def evict_tables(self, global_step=None):
        """Evicts the stale rows of every table with steps_to_live; returns how many."""
        step = self.table_step if global_step is None else global_step
        evicted = 0
        for held in list(self._tables.values()):
            with held.lock:
                evicted += held.table.evict(step)
                held.evicted_at = step
        return evicted

    @staticmethod
    def _conflict(name, old_dtype, old_shape, dtype, shape):
        raise InvalidArgumentError(
            f"variable {name!r} is already declared as {old_dtype.name} {_shape_text(old_shape)}; "
            f"cannot redeclare it as {dtype.name} {_shape_text(shape)}")

    def _get(self, name):
        var = self._variables.get(name)
        if var is None:
            raise NotFoundError(f"no variable {name!r} on parameter server {self.shard}; "
                                "declare it first")
        return var

    def _check_value(self, var, array):
        """Initial values: same shape; same dtype, or another float width (cast)."""
        if array.shape != var.shape:
            raise InvalidArgumentError(f"initial value for variable {var.name!r} has shape "
                                       f"{_shape_text(array.shape)}, but the variable has shape "
                                       f"{_shape_text(var.shape)}")
        if array.dtype != var.dtype and not (array.dtype.kind == var.dtype.kind == "f"):
            raise InvalidArgumentError(f"initial value for variable {var.name!r} has dtype "
                                       f"{array.dtype.name}, but the variable has dtype "
                                       f"{var.dtype.name}")

    def initialize(self, values, overwrite=False):
        """Sets values ({name: array}) of declared variables. A variable that has a value
        keeps it unless `overwrite` (optimizer slots are kept either way, as a local assign
        keeps them). Every value is checked before any is set. Returns the names set."""
        for name, array in values.items():
            self._check_value(self._get(name), array)
        assigned = []
        received = 0
        for name, array in values.items():
            var = self._variables[name]
            received += array.nbytes
            with var.lock:
                if var.value is None:
                    var.value = np.array(array, dtype=var.dtype)  # owned and writable
                elif overwrite:
                    np.copyto(var.value, array, casting="same_kind")  # no new memory
                    self.writes += 1
                else:
                    continue
                assigned.append(name)
        with self._initialized:
            self._initialized.notify_all()
        with self._stats_lock:
            self.bytes_received += received
        return assigned

    def restore_slots(self, slots, global_step=None):
        """Sets optimizer slots {(variable, rule, slot): array} (replacing a variable's slots
        for that rule) and, with `global_step`, the global step: a checkpoint's state, set
        before its values so nobody trains on values without their slots."""
        grouped = {}
        for (name, rule, slot), array in slots.items():
            grouped.setdefault((self._get(name), rule), {})[slot] = array
        checked = {(var, rule): checked_slots(rule, given, var.shape, var.dtype, repr(var.name))
                   for (var, rule), given in grouped.items()}
        for (var, rule), rule_slots in checked.items():
            with var.lock:
                var.slots[rule] = rule_slots
        if global_step is not None:
            if self.holds_global_step:
                self.set_global_step(global_step)
            self.sync.reset(global_step)
            with self._push_ids_lock:  # the pushes they name changed a state that is gone
                self._push_ids.clear()

    def snapshot(self):
        """(values, slots, global step or None) copied under each variable's lock:
        {name: array}, {(name, rule, slot): array}; uninitialized variables are left out."""
        values, slots = {}, {}
        for name, var in list(self._variables.items()):
            with var.lock:
                if var.value is None:
                    continue
                values[name] = var.value.copy()
                for rule, rule_slots in var.slots.items():
                    for slot, array in rule_slots.items():
                        slots[(name, rule, slot)] = np.array(array, copy=True)
        return values, slots, (self.global_step if self.holds_global_step else None)

    def load_table(self, name, fields):
        """Adds a checkpoint's rows (fields as EmbeddingTable.state gives them) to a table."""
        held = self._get_table(name)
        with held.lock:
            held.table.load(fields)
            held.version += 1

    def table_snapshot(self):
        """{table name: state}, each copied a chunk of rows at a time under its table's lock
        (training goes on between chunks), after evicting its stale rows (stale rows go at
        checkpoint time); also returns the longest a table was held at once."""
        tables, pause = {}, 0.0
        for name, held in list(self._tables.items()):
            with held.lock:
                held.table.evict(self.table_step)
            tables[name], longest = held.table.copy_state(held.lock)
            pause = max(pause, longest)
        return tables, pause

    def save(self, path):
        """Writes the snapshot to the shard file `path` (see psflow.checkpoint), which must
        lie below the checkpoint root; returns (sha256, global step or None, bytes, variable
        names)."""
        if self.checkpoint_root is None:
            raise PermissionDeniedError(
                f"parameter server {self.shard} has no checkpoint root, so it writes no "
                "checkpoint (start it with --checkpoint-root DIR, or PSFLOW_CHECKPOINT_DIR)")
        if not path.endswith(".npz") or "\0" in path:
            raise InvalidArgumentError(f"checkpoint file {path!r} must be a path ending in .npz")
        real = os.path.realpath(path)
        if not any(os.path.commonpath([real, root]) == root for root in self.checkpoint_roots):
            raise PermissionDeniedError(f"checkpoint file {path!r} is outside this parameter "
                                        f"server's checkpoint root {self.checkpoint_root}")
        if not os.path.isdir(os.path.dirname(real)):
            raise InvalidArgumentError(f"checkpoint file {path!r}: no such directory")
        started = time.perf_counter()
        values, slots, step = self.snapshot()
        tables, pause = self.table_snapshot()
        if tables:
            log.info("shard %d: tables %s copied for the checkpoint; each held for at most "
                     "%.3f s", self.shard, ", ".join(sorted(tables)), pause)
        try:
            digest = checkpoint.write_shard(real, values, slots, step, tables)
        except OSError as exc:
            raise _file_error(exc, real) from exc
        size = os.path.getsize(real)
        took = time.perf_counter() - started
        with self._stats_lock:
            self.checkpoints += 1
            self.checkpoint_seconds += took
            self.last_checkpoint = (took, size)
        return digest, step, size, sorted(values)

    def missing(self, names):
        """The names among `names` that have no value yet (NotFoundError if one is unknown)."""
        return [n for n in names if self._get(n).value is None]

    def wait_initialized(self, names, timeout, is_active=None):
        """Blocks until every named variable has a value, `timeout` seconds pass, the store is
        closed or `is_active()` turns false (see wake_waiters); returns the names still
        missing."""
        for name in names:
            self._get(name)
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._initialized:
            while True:
                missing = self.missing(names)
                remaining = deadline - time.monotonic()
                if (not missing or remaining <= 0 or self._closed
                        or (is_active is not None and not is_active())):
                    return missing
                self._initialized.wait(remaining)

    def wake_waiters(self):
        """Makes every wait_initialized re-check its condition (e.g. its caller went away)."""
        with self._initialized:
            self._initialized.notify_all()

    def close(self):
        """Ends every current and future wait_initialized at once (the server is stopping)."""
        with self._initialized:
            self._closed = True
            self._initialized.notify_all()

    def with_values(self, names, use, share=False):
        """use([(name, version, array)]) for the named variables, called while their locks are
        held (taken together, in name order; nothing else holds two at a time), so the arrays
        are one consistent snapshot that `use` may read but must not keep: it copies what it
        needs (say, into a reply's bytes) and its result is returned. A name given twice is
        answered once; a set of values too large for one reply is refused before anything is
        copied (RESOURCE_EXHAUSTED). With `share`, the result is kept, and a call with
        `share` for the same variables at the same versions gets it without calling `use`
        (the workers of a sync step all read the values the step made)."""
        variables = [self._get(name) for name in dict.fromkeys(names)]
        size = sum(var.dtype.itemsize * math.prod(var.shape) for var in variables)
        if size > MAX_REPLY_BYTES:
            raise ResourceExhaustedError(
                f"the {len(variables)} variables asked for hold {size} bytes; one reply carries "
                f"at most {MAX_REPLY_BYTES} (ask for them in several calls)")
        ordered = sorted(set(variables), key=lambda v: v.name)
        for var in ordered:
            var.lock.acquire()
        try:
            for var in variables:
                if var.value is None:
                    raise FailedPreconditionError(f"variable {var.name!r} is not initialized yet")
            key = (self.writes, use,
                   tuple((var.name, var.version) for var in variables)) if share else None
            shared_key, result = self._shared
            if key is None or key != shared_key:
                result = use([(var.name, var.version, var.value) for var in variables])
                if share:
                    self._shared = (key, result)
        finally:
            for var in ordered:
                var.lock.release()
        with self._stats_lock:
            self.bytes_sent += sum(var.value.nbytes for var in variables)
            self._count_pulls(variables)
        return result

    def with_rows(self, selections, use):
        """use([(name, version, rows)]) for selections [(name, row indices)], as with_values:
        each selection's rows are copied under the variable's lock. Row indices must be
        integers within the variable's rows (INVALID_ARGUMENT naming the variable, the index
        and the row count otherwise)."""
        checked, size = [], 0
        for name, rows in selections:
            var = self._get(name)
            if not var.shape:
                raise InvalidArgumentError(f"rows of scalar variable {name!r}: a scalar has no "
                                           "rows")
            if rows.dtype.kind not in "iu" or rows.ndim != 1:
                raise InvalidArgumentError(f"rows of {name!r} must be a 1-D integer tensor, got "
                                           f"{rows.dtype.name} {_shape_text(rows.shape)}")
            if rows.size and (rows.min() < 0 or rows.max() >= var.shape[0]):
                bad = int(rows.min()) if rows.min() < 0 else int(rows.max())
                raise InvalidArgumentError(f"row {bad} of variable {name!r} is out of range: it "
                                           f"has {var.shape[0]} rows")
            size += rows.size * var.dtype.itemsize * math.prod(var.shape[1:])
            checked.append((var, rows))
        if size > MAX_REPLY_BYTES:
            raise ResourceExhaustedError(f"the rows asked for hold {size} bytes; one reply "
                                         f"carries at most {MAX_REPLY_BYTES}")
        values = []
        for var, rows in checked:
            with var.lock:
                if var.value is None:
                    raise FailedPreconditionError(f"variable {var.name!r} is not initialized yet")
                values.append((var.name, var.version, var.value[rows]))  # a copy of the rows
        result = use(values)
        with self._stats_lock:
            self.bytes_sent += size
            self._count_pulls(var for var, _ in checked)
        return result

    def _count_pulls(self, held):
        """Counts a pull of each variable or table in `held` (under _stats_lock)."""
        for var in held:
            var.pulls += 1
            self.pulls += 1

    def pull_header(self, commit=None):
        """What a pull answers besides the values: (global step or -1, the last step decision
        (step, workers) on shard 0, else None). A `commit` (step, workers) decided by shard 0
        is applied first on the other shards (see psflow.ps.sync)."""
        if commit is not None and not self.holds_global_step:
            self.sync.commit(*commit)
        decision = self.sync.decision() if self.holds_global_step else None
        return self.reported_global_step(), decision

    def rule(self, name, hyper):
        """The UpdateRule for a spec (a name and its hyperparameters), made once and reused;
        InvalidArgumentError for an unknown rule or hyperparameters it does not take."""
        key = (name, tuple(sorted(hyper.items())))
        with self._rules_lock:
            rule = self._rules.get(key)
            if rule is not None:
                self._rules.move_to_end(key)
                return rule
        if name not in RULES:
            raise InvalidArgumentError(f"unknown update rule {name!r}; known: "
                                       f"{', '.join(sorted(RULES))}")
        try:
            inspect.signature(RULES[name][0]).bind(None, None, None, **hyper)
        except TypeError as exc:
            raise InvalidArgumentError(f"update rule {name!r} with hyperparameters "
                                       f"{dict(hyper)}: {exc}") from None
        rule = UpdateRule(name, **hyper)
        with self._rules_lock:
            self._rules[key] = rule
            while len(self._rules) > RULE_CACHE_SIZE:
                self._rules.popitem(last=False)
        return rule

    def push_step(self, gradients, rule, consistency, worker=-1, global_step=0,
                  increment_global_step=False, push_id=None, returns=()):
        """A worker's push in any mode (a psflow.train.consistency.Consistency as it runs):
        async applies it now; sync holds it for the step's decision (shard 0 waits for the
        decision); ssp applies it and, on shard 0, waits at the staleness bound. `returns`
        names variables whose values the caller will read afterwards: they are checked to be
        initialized before anything is applied. `push_id`, a hashable, makes a repeated push
        get the first one's answer instead of being applied again. Returns a PushResult."""
        not_ready = self.missing(returns)
        if not_ready:
            raise FailedPreconditionError(f"cannot return {not_ready[0]!r} with the push: it "
                                          "is not initialized yet")
        if push_id is None:
            return self._push_step(gradients, rule, consistency, worker, global_step,
                                   increment_global_step)
        while True:
            with self._push_ids_lock:
                answer = self._push_ids.get((worker, push_id))
                if answer is None:
                    answer = self._push_ids[(worker, push_id)] = _Answer()
                    while len(self._push_ids) > PUSH_IDS_KEPT:
                        self._push_ids.popitem(last=False)
                    break
            if not answer.ready.wait(STEP_TIMEOUT_S):
                raise FailedPreconditionError(f"push {push_id} of worker {worker} is still "
                                              f"being applied after {STEP_TIMEOUT_S:g} s")
            if answer.result is not None:
                return answer.result
            # The first one failed, so nothing of it was applied: this one goes ahead.
        try:
            answer.result = self._push_step(gradients, rule, consistency, worker, global_step,
                                            increment_global_step)
            return answer.result
        except BaseException:
            with self._push_ids_lock:
                if self._push_ids.get((worker, push_id)) is answer:
                    del self._push_ids[(worker, push_id)]
            raise
        finally:
            answer.ready.set()

    def _push_step(self, gradients, rule, consistency, worker, global_step,
                   increment_global_step):
        if consistency.mode == "sync":
            self._note_step(global_step)
            checked, received = self.check_gradients(gradients)
            dropped, decision = self.sync.push(worker, global_step, checked, rule, received,
                                               consistency.replicas_to_aggregate)
            return PushResult([], self.reported_global_step(), dropped, decision)
        staleness, step = self.push(gradients, rule, worker=worker,
                                    increment_global_step=increment_global_step,
                                    global_step=global_step)
        if consistency.mode == "ssp" and self.holds_global_step:
            self.sync.ssp_barrier(worker, consistency.staleness)
            step = self.global_step
        return PushResult(staleness, step if self.holds_global_step else -1, False, None)

    def push(self, gradients, rule, worker=-1, increment_global_step=False, global_step=None):
        """Applies gradients, a list of (name, values, indices or None, version), with `rule`
        (an UpdateRule, see `rule()`) now, whatever the mode. Every gradient is checked
        before any is applied. With `increment_global_step` the global step then advances
        by one. `global_step` is the step the worker pulled (for the staleness histogram).
        Returns (the staleness of each gradient, the global step after the push)."""
        self._note_step(global_step)
        checked, received = self.check_gradients(gradients)
        staleness = self.apply(checked, rule)
        if increment_global_step:
            with self._step_lock:
                before = self.global_step
                self.global_step += 1
                step = self.global_step
            if global_step is not None:
                recorded = [max(before - global_step, 0)] * len(staleness)
            else:
                recorded = staleness
        else:
            step = self.global_step
            recorded = staleness
        self.count_push(worker, received, recorded)
        return staleness, step

    def check_gradients(self, gradients):
        """Checks (name, values, indices or None, version) gradients against their variables;
        returns ([(variable, gradient, version)], bytes received). Raises on the first bad one,
        so nothing is applied from a push with a bad gradient."""
        checked = []
        received = 0
        for gradient in gradients:
            name, values, indices, version = gradient[:4]
            if len(gradient) > 4 and gradient[4]:  # keyed: a table's rows by key
                held = self._get_table(name)
                checked.append((held, self._keyed(held, values, indices), version))
                received += values.nbytes + indices.nbytes
                continue
            var = self._get(name)
            if var.dtype.kind != "f":
                raise InvalidArgumentError(f"variable {name!r} has dtype {var.dtype.name}; only "
                                           "floating-point variables take gradients")
            if indices is None:
                grad = self._dense(var, values)
            else:
                grad = self._sparse(var, values, indices)
            if var.value is None:
                raise FailedPreconditionError(
                    f"variable {name!r} is not initialized yet; the chief initializes the "
                    "variables before anyone pushes")
            data = grad.values if isinstance(grad, IndexedSlices) else grad  # after any cast
            if not self.allow_nonfinite and not _finite(data):
                with self._stats_lock:
                    self.nonfinite += 1
                raise InvalidArgumentError(
                    f"gradient for variable {name!r} holds NaN or Inf (or values beyond "
                    f"{var.dtype.name}); nothing of the push was applied (a parameter server "
                    "started with --allow-nonfinite applies such gradients)")
            received += values.nbytes + (0 if indices is None else indices.nbytes)
            checked.append((var, grad, version))
        with self._stats_lock:
            for held, _, _ in checked:
                held.pushes += 1
        return checked, received

    def _keyed(self, held, values, keys):
        name = held.name
        if keys is None or keys.dtype.kind not in "iu" or keys.ndim != 1:
            raise InvalidArgumentError(f"gradient for table {name!r}: keys must be a 1-D "
                                       "int64 tensor")
        if values.shape != (keys.size, held.dim):
            raise InvalidArgumentError(
                f"gradient for table {name!r} has values of shape {_shape_text(values.shape)}, "
                f"but {keys.size} keys of dimension {held.dim} make "
                f"{_shape_text((keys.size, held.dim))}")
        values = self._gradient_dtype(held, values, "gradient")
        if not self.allow_nonfinite and not _finite(values):
            with self._stats_lock:
                self.nonfinite += 1
            raise InvalidArgumentError(
                f"gradient for table {name!r} holds NaN or Inf; nothing of the push was "
                "applied (a parameter server started with --allow-nonfinite applies such "
                "gradients)")
        return IndexedSlices(values, keys.astype(np.int64, copy=False), (-1, held.dim))

    def _apply_to_table(self, held, grad, rule):
        steps_to_live = held.table.steps_to_live
        step = self.table_step
        held.table.apply(rule, grad.indices, grad.values, global_step=step)
        held.version += 1
        if steps_to_live and step - held.evicted_at >= steps_to_live:
            held.table.evict(step)
            held.evicted_at = step

    def apply(self, checked, rule):
        """Applies [(variable, gradient, version)] with `rule`, each under its variable's lock;
        returns each gradient's staleness."""
        started = time.perf_counter()
        staleness = []
        for var, grad, version in checked:
            if isinstance(var, _Table):
                with var.lock:
                    self._apply_to_table(var, grad, rule)
                staleness.append(0)
                continue
            with var.lock:
                slots = var.slots.get(rule.name)
                if slots is None:
                    slots = var.slots[rule.name] = rule.init_slots(var.value)
                rule.apply(var.value, grad, slots)
                staleness.append(max(var.version - version, 0))
                var.version += 1
        took = time.perf_counter() - started
        with self._stats_lock:
            self.apply_buckets[bisect.bisect_left(APPLY_BUCKETS_S, took)] += 1
            self.apply_seconds += took
        return staleness

    def count_push(self, worker, received, staleness):
        with self._stats_lock:
            self.pushes += 1
            self.bytes_received += received
            for s in staleness:
                self.staleness[min(s, STALENESS_BUCKETS - 1)] += 1
        self.members.touch(worker, pushed=True)

    @staticmethod
    def _gradient_dtype(var, values, what):
        if values.dtype.kind != "f":
            raise InvalidArgumentError(f"{what} for variable {var.name!r} has dtype "
                                       f"{values.dtype.name}, but the variable has dtype "
                                       f"{var.dtype.name}")
        # Another float width is cast once here, so the rule's arithmetic is the variable's.
        if values.dtype == var.dtype:
            return values
        with np.errstate(over="ignore"):  # what overflows is refused as non-finite next
            return values.astype(var.dtype)

    def _dense(self, var, values):
        if values.shape != var.shape:
            raise InvalidArgumentError(f"gradient for variable {var.name!r} has shape "
                                       f"{_shape_text(values.shape)}, but the variable has shape "
                                       f"{_shape_text(var.shape)}")
        return self._gradient_dtype(var, values, "gradient")

    def _sparse(self, var, values, indices):
        if not var.shape:
            raise InvalidArgumentError(f"sparse gradient for scalar variable {var.name!r}: a "
                                       "scalar has no rows")
        if indices.dtype.kind not in "iu":
            raise InvalidArgumentError(f"sparse gradient for variable {var.name!r}: indices "
                                       f"must be int64, got {indices.dtype.name}")
        if indices.ndim != 1:
            raise InvalidArgumentError(f"sparse gradient for variable {var.name!r}: indices "
                                       f"must be 1-D, got shape {_shape_text(indices.shape)}")
        expected = (indices.size,) + var.shape[1:]
        if values.shape != expected:
            raise InvalidArgumentError(
                f"sparse gradient for variable {var.name!r} has values of shape "
                f"{_shape_text(values.shape)}, but {indices.size} rows of the variable's shape "
                f"{_shape_text(var.shape)} make {_shape_text(expected)}")
        if indices.size:
            low, high = int(indices.min()), int(indices.max())
            if low < 0 or high >= var.shape[0]:
                bad = low if low < 0 else high
                raise InvalidArgumentError(f"sparse gradient for variable {var.name!r}: row "
                                           f"index {bad} is out of range [0, {var.shape[0]})")
        values = self._gradient_dtype(var, values, "sparse gradient")
        return IndexedSlices(values, indices, var.shape)

    # -- membership ------------------------------------------------------------------------
    def register(self, index):
        """Worker `index` has started. Returns (number of workers, how many are done)."""
        membership = self.members.register(index)
        self.sync.on_register(index)
        return membership

    def heartbeat(self, index, local_step, loss, activity="", examples=0):
        """Worker `index` is alive at its `local_step` with `loss`, having trained on
        `examples`. Returns membership."""
        return self.members.heartbeat(index, local_step, loss, activity, examples)

    def done(self, index):
        """Worker `index` has finished (idempotent). Returns membership."""
        membership = self.members.done(index)
        self.sync.wake()  # steps waiting for this worker go on without it
        return membership

    def stats(self):
        """Counters as a dict: the fields of the proto's StatsResponse; `workers` holds
        (task_index, registered, done, local_step, loss, last_seen_s, pushes, activity,
        examples) tuples."""
        now = time.monotonic()
        workers = self.members.rows()
        variable_bytes = sum(v.dtype.itemsize * math.prod(v.shape)
                             for v in list(self._variables.values()))
        with self._stats_lock:
            return {"shard": self.shard,
                    "global_step": self.global_step if self.holds_global_step else -1,
                    "pushes": self.pushes, "bytes_received": self.bytes_received,
                    "bytes_sent": self.bytes_sent, "staleness_histogram": list(self.staleness),
                    "workers": workers, "variables": len(self._variables),
                    "dropped": self.sync.dropped, "nonfinite": self.nonfinite,
                    "uptime_s": now - self.started, "variable_bytes": variable_bytes,
                    "pulls": self.pulls, "sync_steps": self.sync.steps}

    def variable_stats(self):
        """[(name, rows, bytes, gradients received, pulls answered)] of every variable, by
        name (a scalar has one row)."""
        with self._registry_lock:
            held = sorted(self._variables.values(), key=lambda v: v.name)
        return [(v.name, v.shape[0] if v.shape else 1, v.dtype.itemsize * math.prod(v.shape),
                 v.pushes, v.pulls) for v in held]

    def table_counters(self):
        """{table name: (gradients received, pulls answered)}."""
        with self._registry_lock:
            held = list(self._tables.values())
        return {t.name: (t.pushes, t.pulls) for t in held}

    def timings(self):
        """(apply-time bucket counts by APPLY_BUCKETS_S, their seconds, checkpoints written,
        their seconds, (seconds, bytes) of the last)."""
        with self._stats_lock:
            return (list(self.apply_buckets), self.apply_seconds, self.checkpoints,
                    self.checkpoint_seconds, self.last_checkpoint)


class _Answer:
    """The answer to a push with an id, once it is known (`ready`); None if it failed."""

    __slots__ = ("result", "ready")

    def __init__(self):
        self.result = None
        self.ready = threading.Event()


def _finite(values):
    """True when no element of `values` is NaN or Inf. A dot product of the array with itself
    is NaN or Inf when any element is, and BLAS runs it at memory speed; only an overflow of
    huge but finite values needs the exact look."""
    if values.dtype in (np.float32, np.float64) and values.flags.c_contiguous:
        flat = values.reshape(-1)
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(np.dot(flat, flat)):
                return True
    return bool(np.isfinite(values).all())


def _file_error(exc, path):
    """The psflow error for an OSError writing `path`: out of space is RESOURCE_EXHAUSTED,
    not allowed is PERMISSION_DENIED, the rest FAILED_PRECONDITION; each names the path and
    the system's reason."""
    text = f"cannot write checkpoint file {path}: {exc.strerror or exc}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return ResourceExhaustedError(text)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDeniedError(text)
    return FailedPreconditionError(text)
