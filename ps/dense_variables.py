"""The dense variables of one shard: each a value with its optimizer slots, a version and a
lock. Pushes to different variables run in parallel, pushes to the same variable are applied
one after the other and none is lost. The update rules are psflow.train.update_rules', applied
in place, so the shard does exactly what local training does."""

import math
import threading
import time

import numpy as np

from psflow.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from psflow.graph import format_shape as _shape_text
from psflow.proto.codec import MAX_DIMS, MAX_MESSAGE_BYTES
from psflow.train.update_rules import checked_slots_by_variable

# Room for the tensors of one reply, below gRPC's message limit.
MAX_REPLY_BYTES = MAX_MESSAGE_BYTES - 16 * 1024 * 1024


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

    def apply(self, rule, grad, version, global_step):
        """Applies `grad` (computed from `version`) with `rule` under the lock; returns its
        staleness. (`global_step` is for tables.)"""
        with self.lock:
            rule.apply(self.value, grad, rule.slots_of(self.slots, self.value))
            staleness = max(self.version - version, 0)
            self.version += 1
        return staleness


class DenseVariables:
    """The shard's variables by name, declared, then given values (by the chief), then read
    and updated. `registry_lock` guards the names (shared with the shard's tables, so a name
    is one or the other); waits for values sleep on it."""

    def __init__(self, shard, registry_lock, counters):
        self.shard = shard
        self.counters = counters
        self.held = {}  # name -> _Variable
        self._registry_lock = registry_lock
        # Notified whenever variables get values (and on close): wait_initialized sleeps on it.
        self._initialized = threading.Condition(registry_lock)
        self._closed = False
        # with_values(share=True): the last answer, for the same values asked again. `writes`
        # counts the writes that keep a variable's version (an initializer's overwrite).
        self.writes = 0
        self._shared = (None, None)

    def __len__(self):
        return len(self.held)

    def get(self, name):
        var = self.held.get(name)
        if var is None:
            raise NotFoundError(f"no variable {name!r} on parameter server {self.shard}; "
                                "declare it first")
        return var

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
                _conflict(name, *checked[name], dtype, shape)
            checked[name] = (dtype, shape)
        initialized = []
        with self._registry_lock:
            for name, (dtype, shape) in checked.items():
                var = self.held.get(name)
                if var is not None and (var.dtype != dtype or var.shape != shape):
                    _conflict(name, var.dtype, var.shape, dtype, shape)
            for name, (dtype, shape) in checked.items():
                var = self.held.get(name)
                if var is None:
                    self.held[name] = _Variable(name, dtype, shape)
                elif var.value is not None:
                    initialized.append(name)
        return initialized

    def initialize(self, values, overwrite=False):
        """Sets values ({name: array}) of declared variables. A variable that has a value
        keeps it unless `overwrite` (optimizer slots are kept either way, as a local assign
        keeps them). Every value is checked before any is set. Returns the names set."""
        for name, array in values.items():
            _check_value(self.get(name), array)
        assigned = []
        received = 0
        for name, array in values.items():
            var = self.held[name]
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
        self.counters.count_received(received)
        return assigned

    def restore_slots(self, slots):
        """Sets optimizer slots {(variable, rule, slot): array}, replacing a variable's slots
        for that rule; every slot is checked before any is set."""
        checked = checked_slots_by_variable(
            {(self.get(name), rule, slot): array for (name, rule, slot), array in slots.items()})
        for (var, rule), rule_slots in checked.items():
            with var.lock:
                var.slots[rule] = rule_slots

    def add_to(self, contents):
        """Adds a copy of each initialized variable's value and slots, taken under its lock,
        to `contents` (a psflow.checkpoint.ShardContents)."""
        for name, var in list(self.held.items()):
            with var.lock:
                if var.value is not None:
                    contents.add(name, var.value, var.slots, copy=True)

    def missing(self, names):
        """The names among `names` that have no value yet (NotFoundError if one is unknown)."""
        return [n for n in names if self.get(n).value is None]

    def wait_initialized(self, names, timeout, is_active=None):
        """Blocks until every named variable has a value, `timeout` seconds pass, the store is
        closed or `is_active()` turns false (see wake_waiters); returns the names still
        missing."""
        for name in names:
            self.get(name)
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
        variables = [self.get(name) for name in dict.fromkeys(names)]
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
        self.counters.count_pulls(sum(var.value.nbytes for var in variables), variables)
        return result

    def with_rows(self, selections, use):
        """use([(name, version, rows)]) for selections [(name, row indices)], as with_values:
        each selection's rows are copied under the variable's lock. Row indices must be
        integers within the variable's rows (INVALID_ARGUMENT naming the variable, the index
        and the row count otherwise)."""
        checked, size = [], 0
        for name, rows in selections:
            var = self.get(name)
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
        self.counters.count_pulls(size, [var for var, _ in checked])
        return result

    def nbytes(self):
        """Bytes the variables' values hold (declared ones included)."""
        return sum(v.dtype.itemsize * math.prod(v.shape) for v in list(self.held.values()))

    def stats(self):
        """[(name, rows, bytes, gradients received, pulls answered)] of every variable, by
        name (a scalar has one row)."""
        with self._registry_lock:
            held = sorted(self.held.values(), key=lambda v: v.name)
        return [(v.name, v.shape[0] if v.shape else 1, v.dtype.itemsize * math.prod(v.shape),
                 v.pushes, v.pulls) for v in held]


def _conflict(name, old_dtype, old_shape, dtype, shape):
    raise InvalidArgumentError(
        f"variable {name!r} is already declared as {old_dtype.name} {_shape_text(old_shape)}; "
        f"cannot redeclare it as {dtype.name} {_shape_text(shape)}")


def _check_value(var, array):
    """Initial values: same shape; same dtype, or another float width (cast)."""
    if array.shape != var.shape:
        raise InvalidArgumentError(f"initial value for variable {var.name!r} has shape "
                                   f"{_shape_text(array.shape)}, but the variable has shape "
                                   f"{_shape_text(var.shape)}")
    if array.dtype != var.dtype and not (array.dtype.kind == var.dtype.kind == "f"):
        raise InvalidArgumentError(f"initial value for variable {var.name!r} has dtype "
                                   f"{array.dtype.name}, but the variable has dtype "
                                   f"{var.dtype.name}")
