"""The variables of one parameter-server shard, as a plain object (no gRPC here).

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
"""

import collections
import inspect
import math
import os
import threading
import time

import numpy as np

from psflow.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from psflow.gradients import IndexedSlices
from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb
from psflow.proto.codec import shape_str as _shape_text
from psflow.train.update_rules import RULES, UpdateRule

from . import checkpoint
from .sync import SyncState

STALENESS_BUCKETS = 32
# Distinct rule specs kept; a decaying learning rate makes a new spec every step.
RULE_CACHE_SIZE = 64


class _Variable:
    __slots__ = ("name", "dtype", "shape", "value", "slots", "version", "lock")

    def __init__(self, name, dtype, shape):
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.value = None
        self.slots = {}  # rule name -> that rule's slots, made at its first push
        self.version = 0
        self.lock = threading.Lock()


class _Worker:
    __slots__ = ("registered", "done", "local_step", "loss", "last_seen", "pushes")

    def __init__(self):
        self.registered = False
        self.done = False
        self.local_step = 0
        self.loss = math.nan
        self.last_seen = None
        self.pushes = 0


class ShardStore:
    """Variables, optimizer slots, the global step (held by shard 0), counters and worker
    membership of one shard. Every method is safe to call from many threads."""

    def __init__(self, shard=0, num_workers=1):
        if num_workers < 1:
            raise ValueError(f"a parameter server needs at least one worker, got {num_workers}")
        self.shard = shard
        self.num_workers = num_workers
        self.started = time.monotonic()
        self._variables = {}
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
        self._workers = {}
        self.all_done = threading.Event()
        self.sync = SyncState(self)

    @property
    def holds_global_step(self):
        return self.shard == 0

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
        checked = {}
        for (name, rule, slot), array in slots.items():
            var = self._get(name)
            if rule not in RULES:
                raise InvalidArgumentError(f"slot {slot!r} of {name!r}: unknown update rule "
                                           f"{rule!r}")
            if array.shape not in (var.shape, ()):
                raise InvalidArgumentError(f"slot {rule}/{slot} of {name!r} has shape "
                                           f"{_shape_text(array.shape)}; the variable has "
                                           f"shape {_shape_text(var.shape)}")
            checked.setdefault((var, rule), {})[slot] = np.array(array)
        for (var, rule), rule_slots in checked.items():
            with var.lock:
                var.slots[rule] = rule_slots
        if global_step is not None:
            if self.holds_global_step:
                with self._step_lock:
                    self.global_step = int(global_step)
            self.sync.reset(global_step)

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

    def save(self, path):
        """Writes the snapshot to the shard file `path` (see psflow.ps.checkpoint); returns
        (sha256, global step or None, bytes, variable names)."""
        if not path.endswith(".npz"):
            raise InvalidArgumentError(f"checkpoint file {path!r} must end in .npz")
        if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise InvalidArgumentError(f"checkpoint file {path!r}: no such directory")
        values, slots, step = self.snapshot()
        digest = checkpoint.write_shard(path, values, slots, step)
        return digest, step, os.path.getsize(path), sorted(values)

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

    def pull(self, names):
        """[(name, bytes of the value, dtype, shape, version)]: each a consistent snapshot,
        copied under the variable's lock."""
        out = []
        sent = 0
        for name in names:
            var = self._get(name)
            with var.lock:
                if var.value is None:
                    raise FailedPreconditionError(f"variable {name!r} is not initialized yet")
                data = var.value.tobytes()
                version = var.version
            sent += len(data)
            out.append((name, data, var.dtype, var.shape, version))
        with self._stats_lock:
            self.bytes_sent += sent
        return out

    def pull_message(self, names, number, prefix=b""):
        """`prefix` followed by the current value of each named variable as field `number`
        (repeated NamedTensor) of a message, in protobuf's wire format: the bytes of a reply.
        The values are copied once, straight into the reply, under their locks (taken
        together, in name order; nothing else holds two at a time)."""
        variables = [self._get(name) for name in names]
        ordered = sorted(set(variables), key=lambda v: v.name)
        for var in ordered:
            var.lock.acquire()
        try:
            pieces = [prefix]
            sent = 0
            for var in variables:
                if var.value is None:
                    raise FailedPreconditionError(f"variable {var.name!r} is not initialized yet")
                head = pb.NamedTensor(name=var.name, version=var.version).SerializeToString()
                pieces += codec.submessage_pieces(number, head, 2, var.value)
                sent += var.value.nbytes
            data = b"".join(pieces)
        finally:
            for var in ordered:
                var.lock.release()
        with self._stats_lock:
            self.bytes_sent += sent
        return data

    def read(self, name):
        """(a copy of the value, its version); FailedPreconditionError before initialization."""
        var = self._get(name)
        with var.lock:
            if var.value is None:
                raise FailedPreconditionError(f"variable {name!r} is not initialized yet")
            return var.value.copy(), var.version

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

    def push(self, gradients, rule, worker=-1, increment_global_step=False, global_step=None):
        """Applies gradients, a list of (name, values, indices or None, version), with `rule`
        (an UpdateRule, see `rule()`). Every gradient is checked before any is applied. With
        `increment_global_step` the global step then advances by one. `global_step` is the
        step the worker pulled (for the staleness histogram). Returns (the staleness of each
        gradient, the global step after the push)."""
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
        for name, values, indices, version in gradients:
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
            received += values.nbytes + (0 if indices is None else indices.nbytes)
            checked.append((var, grad, version))
        return checked, received

    def apply(self, checked, rule):
        """Applies [(variable, gradient, version)] with `rule`, each under its variable's lock;
        returns each gradient's staleness."""
        staleness = []
        for var, grad, version in checked:
            with var.lock:
                slots = var.slots.get(rule.name)
                if slots is None:
                    slots = var.slots[rule.name] = rule.init_slots(var.value)
                rule.apply(var.value, grad, slots)
                staleness.append(max(var.version - version, 0))
                var.version += 1
        return staleness

    def count_push(self, worker, received, staleness):
        with self._stats_lock:
            self.pushes += 1
            self.bytes_received += received
            for s in staleness:
                self.staleness[min(s, STALENESS_BUCKETS - 1)] += 1
            if 0 <= worker < self.num_workers:
                self._worker(worker).pushes += 1

    @staticmethod
    def _gradient_dtype(var, values, what):
        if values.dtype.kind != "f":
            raise InvalidArgumentError(f"{what} for variable {var.name!r} has dtype "
                                       f"{values.dtype.name}, but the variable has dtype "
                                       f"{var.dtype.name}")
        # Another float width is cast once here, so the rule's arithmetic is the variable's.
        return values if values.dtype == var.dtype else values.astype(var.dtype)

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
    def _worker(self, index):
        worker = self._workers.get(index)
        if worker is None:
            worker = self._workers[index] = _Worker()
        return worker

    def _check_task(self, index):
        if not 0 <= index < self.num_workers:
            raise InvalidArgumentError(f"worker {index} is out of range: this job has "
                                       f"{self.num_workers} workers (0 to {self.num_workers - 1})")

    def _done_count(self):
        return sum(w.done for w in self._workers.values())

    def register(self, index):
        """Worker `index` has started. Returns (number of workers, how many are done)."""
        self._check_task(index)
        with self._stats_lock:
            worker = self._worker(index)
            worker.registered = True
            worker.done = False  # a restarted worker is back
            worker.last_seen = time.monotonic()
            membership = self.num_workers, self._done_count()
        self.sync.on_register(index)
        return membership

    def touch(self, index):
        """Worker `index` was just heard from (a push counts as a heartbeat)."""
        if 0 <= index < self.num_workers:
            with self._stats_lock:
                self._worker(index).last_seen = time.monotonic()

    def heartbeat(self, index, local_step, loss):
        """Worker `index` is alive at its `local_step` with `loss`. Returns membership."""
        self._check_task(index)
        with self._stats_lock:
            worker = self._worker(index)
            worker.local_step = local_step
            worker.loss = loss
            worker.last_seen = time.monotonic()
            return self.num_workers, self._done_count()

    def done(self, index):
        """Worker `index` has finished (idempotent). When all have, `all_done` is set."""
        self._check_task(index)
        with self._stats_lock:
            worker = self._worker(index)
            worker.done = True
            worker.last_seen = time.monotonic()
            finished = self._done_count()
        self.sync.wake()  # steps waiting for this worker go on without it
        if finished >= self.num_workers:
            self.all_done.set()
        return self.num_workers, finished

    def membership(self):
        """(number of workers, how many are done)."""
        with self._stats_lock:
            return self.num_workers, self._done_count()

    def stats(self):
        """Counters as a dict: the fields of the proto's StatsResponse; `workers` holds
        (task_index, registered, done, local_step, loss, last_seen_s, pushes) tuples."""
        now = time.monotonic()
        with self._stats_lock:
            workers = [(index, w.registered, w.done, w.local_step, w.loss,
                        (now - w.last_seen) if w.last_seen is not None else -1.0, w.pushes)
                       for index, w in sorted(self._workers.items())]
            return {"shard": self.shard,
                    "global_step": self.global_step if self.holds_global_step else -1,
                    "pushes": self.pushes, "bytes_received": self.bytes_received,
                    "bytes_sent": self.bytes_sent, "staleness_histogram": list(self.staleness),
                    "workers": workers, "variables": len(self._variables),
                    "dropped": self.sync.dropped,
                    "uptime_s": now - self.started}
