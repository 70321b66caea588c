"""The variables of one parameter-server shard, as a plain object (no gRPC here).

Each variable has its own lock: pushes to different variables run in parallel, pushes to the
same variable are applied one after the other and none is lost. Update rules are those of
psflow.train.update_rules, applied in place, so the shard does exactly what local training
does.
"""

import math
import threading
import time

import numpy as np

from psflow.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from psflow.gradients import IndexedSlices
from psflow.train.update_rules import UpdateRule

STALENESS_BUCKETS = 32


class _Variable:
    __slots__ = ("name", "dtype", "shape", "value", "slots", "version", "lock")

    def __init__(self, name, dtype, shape):
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.value = None
        self.slots = {}
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


def _shape_text(shape):
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


class ShardStore:
    """Variables, optimizer slots, the global step (on shard 0) and worker membership."""

    def __init__(self, shard=0, num_workers=1):
        if num_workers < 1:
            raise ValueError("a parameter server needs at least one worker")
        self.shard = shard
        self.num_workers = num_workers
        self.started = time.monotonic()
        self._variables = {}
        self._registry_lock = threading.Lock()
        self._initialized = threading.Condition(self._registry_lock)
        self._rules = {}
        self._step_lock = threading.Lock()
        self.global_step = 0
        self._stats_lock = threading.Lock()
        self.pushes = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        self.staleness = [0] * STALENESS_BUCKETS
        self._workers = {}
        self.all_done = threading.Event()

    # -- variables -------------------------------------------------------------------------
    def declare(self, specs):
        """Declares (name, dtype, shape) triples; returns the names that already have values.
        Re-declaring alike is a no-op; declaring differently is an InvalidArgumentError."""
        checked = []
        for name, dtype, shape in specs:
            if not name:
                raise InvalidArgumentError("a variable needs a name")
            try:
                dtype = np.dtype(dtype)
            except TypeError:
                raise InvalidArgumentError(f"variable {name!r}: unknown dtype {dtype!r}") from None
            shape = tuple(int(d) for d in shape)
            if any(d < 0 for d in shape):
                raise InvalidArgumentError(f"variable {name!r}: negative dimension in "
                                           f"{_shape_text(shape)}")
            checked.append((name, dtype, shape))
        initialized = []
        with self._registry_lock:
            for name, dtype, shape in checked:
                var = self._variables.get(name)
                if var is None:
                    self._variables[name] = _Variable(name, dtype, shape)
                    continue
                if var.dtype != dtype or var.shape != shape:
                    raise InvalidArgumentError(
                        f"variable {name!r} is already declared as {var.dtype.name} "
                        f"{_shape_text(var.shape)}; cannot redeclare it as {dtype.name} "
                        f"{_shape_text(shape)}")
                if var.value is not None:
                    initialized.append(name)
        return initialized

    def _get(self, name):
        var = self._variables.get(name)
        if var is None:
            raise NotFoundError(f"no variable {name!r} on parameter server {self.shard}")
        return var

    def _check_value(self, var, array, what):
        if array.shape != var.shape:
            raise InvalidArgumentError(f"{what} for variable {var.name!r} has shape "
                                       f"{_shape_text(array.shape)}, but the variable has shape "
                                       f"{_shape_text(var.shape)}")
        if array.dtype != var.dtype and not (array.dtype.kind == var.dtype.kind == "f"):
            raise InvalidArgumentError(f"{what} for variable {var.name!r} has dtype "
                                       f"{array.dtype.name}, but the variable has dtype "
                                       f"{var.dtype.name}")

    def initialize(self, values, overwrite=False):
        """Sets values ({name: array}) of declared variables. A variable that has a value
        keeps it unless `overwrite`. Returns the names whose value was set."""
        for name, array in values.items():
            self._check_value(self._get(name), array, "initial value")
        assigned = []
        for name, array in values.items():
            var = self._variables[name]
            with var.lock:
                if var.value is not None and not overwrite:
                    continue
                var.value = np.array(array, dtype=var.dtype)  # owned and writable
                var.slots = {}
                assigned.append(name)
        with self._initialized:
            self._initialized.notify_all()
        self._count_received(sum(a.nbytes for a in values.values()))
        return assigned

    def missing(self, names):
        return [n for n in names if self._get(n).value is None]

    def wait_initialized(self, names, timeout):
        """Blocks until every named variable has a value or `timeout` seconds pass; returns
        the names still missing."""
        for name in names:
            self._get(name)
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._initialized:
            while True:
                missing = self.missing(names)
                remaining = deadline - time.monotonic()
                if not missing or remaining <= 0:
                    return missing
                self._initialized.wait(remaining)

    def pull(self, names):
        """[(name, bytes of the value, dtype, shape, version)] — each a consistent snapshot."""
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

    def rule(self, name, hyper):
        """The UpdateRule for a spec, made once and then reused."""
        key = (name, tuple(sorted(hyper.items())))
        rule = self._rules.get(key)
        if rule is None:
            try:
                rule = UpdateRule(name, **hyper)
            except (ValueError, TypeError) as exc:
                raise InvalidArgumentError(f"bad update rule {name!r}: {exc}") from None
            self._rules[key] = rule
        return rule

    def push(self, gradients, rule, worker=-1, increment_global_step=False):
        """Applies gradients: a list of (name, values, indices or None, version). Every
        gradient is validated before any is applied. Returns (staleness list, global step)."""
        checked = []
        received = 0
        for name, values, indices, version in gradients:
            var = self._get(name)
            if indices is None:
                self._check_value(var, values, "gradient")
                grad = values
            else:
                grad = self._sparse(var, values, indices)
            received += values.nbytes + (0 if indices is None else indices.nbytes)
            checked.append((var, grad, version))
        staleness = []
        for var, grad, version in checked:
            with var.lock:
                if var.value is None:
                    raise FailedPreconditionError(
                        f"variable {var.name!r} is not initialized yet; the chief initializes "
                        "the variables before anyone pushes")
                if not var.slots:
                    var.slots = rule.init_slots(var.value)
                rule.apply(var.value, grad, var.slots)
                staleness.append(max(var.version - version, 0))
                var.version += 1
        step = self.global_step
        if increment_global_step:
            with self._step_lock:
                self.global_step += 1
                step = self.global_step
        with self._stats_lock:
            self.pushes += 1
            self.bytes_received += received
            for s in staleness:
                self.staleness[min(s, STALENESS_BUCKETS - 1)] += 1
            if worker >= 0:
                self._worker(worker).pushes += 1
        return staleness, step

    def _sparse(self, var, values, indices):
        if not var.shape:
            raise InvalidArgumentError(f"sparse gradient for scalar variable {var.name!r}")
        indices = indices.reshape(-1)
        if indices.dtype.kind not in "iu":
            raise InvalidArgumentError(f"sparse gradient for {var.name!r}: indices must be "
                                       f"integers, got {indices.dtype.name}")
        expected = (indices.size,) + var.shape[1:]
        if values.shape != expected:
            raise InvalidArgumentError(f"sparse gradient for {var.name!r} has values of shape "
                                       f"{_shape_text(values.shape)}, expected "
                                       f"{_shape_text(expected)} for {indices.size} rows")
        if indices.size and (indices.min() < 0 or indices.max() >= var.shape[0]):
            raise InvalidArgumentError(f"sparse gradient for {var.name!r}: row index out of "
                                       f"range [0, {var.shape[0]})")
        return IndexedSlices(values, indices, var.shape)

    def _count_received(self, nbytes):
        with self._stats_lock:
            self.bytes_received += nbytes

    # -- membership ------------------------------------------------------------------------
    def _worker(self, index):
        worker = self._workers.get(index)
        if worker is None:
            worker = self._workers[index] = _Worker()
        return worker

    def _check_task(self, index):
        if not 0 <= index < self.num_workers:
            raise InvalidArgumentError(f"worker {index} is out of range: this job has "
                                       f"{self.num_workers} workers")

    def register(self, index):
        self._check_task(index)
        with self._stats_lock:
            worker = self._worker(index)
            worker.registered = True
            worker.done = False
            worker.last_seen = time.monotonic()
        return self.membership()

    def heartbeat(self, index, local_step, loss):
        self._check_task(index)
        with self._stats_lock:
            worker = self._worker(index)
            worker.local_step = local_step
            worker.loss = loss
            worker.last_seen = time.monotonic()
        return self.membership()

    def done(self, index):
        self._check_task(index)
        with self._stats_lock:
            worker = self._worker(index)
            worker.done = True
            worker.last_seen = time.monotonic()
            finished = sum(w.done for w in self._workers.values())
        if finished >= self.num_workers:
            self.all_done.set()
        return self.membership()

    def membership(self):
        """(number of workers, how many are done)."""
        return self.num_workers, sum(w.done for w in self._workers.values())

    def stats(self):
        now = time.monotonic()
        with self._stats_lock:
            workers = [(index, w.registered, w.done, w.local_step, w.loss,
                        (now - w.last_seen) if w.last_seen is not None else -1.0, w.pushes)
                       for index, w in sorted(self._workers.items())]
            return {"shard": self.shard, "global_step": self.global_step,
                    "pushes": self.pushes, "bytes_received": self.bytes_received,
                    "bytes_sent": self.bytes_sent, "staleness_histogram": list(self.staleness),
                    "workers": workers, "variables": len(self._variables),
                    "uptime_s": now - self.started}
