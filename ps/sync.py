"""Synchronous and bounded-staleness training on one shard.

SYNC. A worker computes its gradients at global step t and pushes them to every shard; the
shards other than 0 keep them aside, and shard 0, pushed to last, decides the step: once
`replicas_to_aggregate` workers (at most the live ones) have pushed for step t, the first of
them make up the step. Shard 0 applies the average of their gradients once, advances the
global step, and answers every waiting push with the decision (step, workers). Each worker
then pulls from the other shards with that decision as `commit`, and a shard applies the step
(the average of the same workers' gradients) the first time it hears of it. So every shard
applies step t from the same set of workers. A push for an older step is dropped and counted.

SSP with staleness s > 0. Pushes are applied on arrival; shard 0 counts each worker's pushes
(its clock) and answers a push only when the slowest live worker is at most s steps behind the
pusher's next step. Staleness 0 is bulk-synchronous and runs as SYNC.

Steps need only the live workers (see psflow.ps.membership), so nobody waits for one that
has left. Every wait is bounded by STEP_TIMEOUT_S and then fails with a message naming whom it
waited for.
"""

import logging
import threading
import time

import numpy as np

from psflow import settings
from psflow.errors import DeadlineExceededError, FailedPreconditionError, InvalidArgumentError
from psflow.indexed_slices import IndexedSlices
from psflow.transport.lane import in_shared_memory

log = logging.getLogger(__name__)

STEP_TIMEOUT_S = settings.STEP_TIMEOUT.get()
WAKE_S = 0.2
DECISIONS_KEPT = 64


def _kept(grad):
    """`grad`, or a copy of the arrays of it that lie in a same-host lane's shared region:
    they are valid only during the push that brought them, and a pending gradient outlives
    it."""
    if isinstance(grad, IndexedSlices):
        values, indices = _kept(grad.values), _kept(grad.indices)
        if values is grad.values and indices is grad.indices:
            return grad
        return IndexedSlices(values, indices, grad.dense_shape)
    return np.array(grad) if in_shared_memory(grad) else grad


def average(grads):
    """The mean of several workers' gradients of one variable (dense, sparse or mixed)."""
    n = len(grads)
    if n == 1:
        return grads[0]
    if all(isinstance(g, IndexedSlices) for g in grads):
        values = np.concatenate([np.asarray(g.values) for g in grads]) / n
        indices = np.concatenate([np.asarray(g.indices).reshape(-1) for g in grads])
        return IndexedSlices(values.astype(grads[0].values.dtype, copy=False), indices,
                             grads[0].dense_shape)
    total = None
    for g in grads:
        g = g.to_dense() if isinstance(g, IndexedSlices) else g
        if total is None:
            total = np.array(g, copy=True)
        else:
            np.add(total, g, out=total)  # in place: no array per worker
    total /= n
    return total


class SyncState:
    """The sync/ssp bookkeeping of one shard (see the module docstring)."""

    def __init__(self, store):
        self.store = store
        self.cond = threading.Condition()
        self.applied = 0  # shards other than 0: sync steps applied here
        self.pending = {}  # step -> {worker: (checked gradients, rule)}
        self.arrivals = {}  # shard 0: step -> workers in the order they pushed
        self.decisions = {}  # shard 0: step -> workers whose gradients made it
        self.last_decision = (-1, ())
        self.dropped = 0
        self.steps = 0  # steps applied here (decided on shard 0, committed elsewhere)
        self.clocks = {}  # ssp: worker -> pushes so far

    # -- membership ------------------------------------------------------------------------
    def live_workers(self):
        """Indices of the workers that have not left."""
        return self.store.members.live()

    def _needed(self, replicas):
        live = len(self.live_workers())
        wanted = replicas if replicas > 0 else self.store.num_workers
        return max(1, min(wanted, live))

    def wake(self):
        with self.cond:
            self.cond.notify_all()

    # -- sync ------------------------------------------------------------------------------
    def push(self, worker, step, checked, rule, received, replicas, wait=True):
        """A sync push of gradients computed at `step`. On shard 0 it waits for the step's
        decision; returns (dropped, (step, workers) of the decision or None). With `wait`
        False (a shard run as a chain: see psflow.ps.sync_chain) shard 0 only records the
        push among the step's arrivals and returns (False, None) unless it is dropped."""
        store = self.store
        store.members.touch(worker)
        with self.cond:
            current = store.global_step if store.holds_global_step else self.applied
            if step < current:
                self.dropped += len(checked)
                store.count_push(worker, received, [current - step] * len(checked))
                return True, self.last_decision
            if step > current and store.holds_global_step:
                raise FailedPreconditionError(
                    f"worker {worker} pushed gradients for step {step}, but the global step is "
                    f"{current}; pull before pushing")
            pending = self.pending.setdefault(step, {})
            # A worker that sends its step again (retrying after a failure) replaces it.
            if not store.holds_global_step or not wait:
                # Shard 0 answers only once the step is applied, unless another decides it.
                checked = [(var, _kept(grad), version) for var, grad, version in checked]
            pending[worker] = (checked, rule)
            store.count_push(worker, received, [0] * len(checked))
            if not store.holds_global_step:
                return False, None
            arrivals = self.arrivals.setdefault(step, [])
            if worker not in arrivals:
                arrivals.append(worker)
            if not wait:
                self.cond.notify_all()
                return False, None
            deadline = time.monotonic() + STEP_TIMEOUT_S
            while step not in self.decisions:
                needed = self._needed(replicas)
                if len(arrivals) >= needed:
                    self._decide(step, arrivals[:needed])
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    waiting = sorted(set(self.live_workers()) - set(arrivals))
                    raise DeadlineExceededError(
                        f"step {step} waited {STEP_TIMEOUT_S:g} s for gradients from "
                        f"{needed} workers; it has them from {sorted(arrivals)}, still "
                        f"waiting for worker(s) {waiting}")
                self.cond.wait(min(WAKE_S, remaining))
            workers = self.decisions[step]
            if worker not in workers:
                self.dropped += len(checked)
                return True, (step, workers)
            return False, (step, workers)

    def ready(self, step, replicas):
        """Shard 0: the workers that make up `step` (the first of its arrivals, as many as
        needed of the live ones), or None when too few pushed for it yet or it is decided
        (under self.cond)."""
        if step in self.decisions or step != self.store.global_step:
            return None
        arrivals = self.arrivals.get(step, [])
        needed = self._needed(replicas)
        return tuple(arrivals[:needed]) if len(arrivals) >= needed else None

    def apply_decision(self, step, workers):
        """Shard 0: applies the decision (step, workers) taken elsewhere (by the head of the
        shard's chain), which must be of the current global step."""
        with self.cond:
            if step in self.decisions:
                return
            if step != self.store.global_step:
                raise FailedPreconditionError(
                    f"the decision of step {step} came at global step {self.store.global_step}")
            self._decide(step, tuple(workers))

    def in_use(self):
        """Whether synchronous or bounded-staleness training ran here."""
        with self.cond:
            return bool(self.steps or self.pending or self.arrivals or
                        any(self.clocks.values()))

    def _decide(self, step, workers):
        """Shard 0: applies the step and advances the global step (under self.cond)."""
        self._apply(step, workers)
        self.store.set_global_step(step + 1)
        self.decisions[step] = tuple(workers)
        self.last_decision = (step, tuple(workers))
        self.arrivals.pop(step, None)
        for old in [s for s in self.decisions if s < step - DECISIONS_KEPT]:
            del self.decisions[old]
        self.cond.notify_all()

    def _apply(self, step, workers):
        """Applies the average of `workers`' pending gradients for `step`; forgets the step
        and any older one."""
        pending = self.pending.get(step, {})
        self.steps += 1
        by_var = {}
        rule = None
        for worker in workers:
            entry = pending.get(worker)
            if entry is None:
                continue
            checked, rule = entry
            for var, grad, _version in checked:
                by_var.setdefault(var.name, (var, []))[1].append(grad)
        if rule is not None:
            self.store.apply([(var, average(grads), var.version)
                              for var, grads in by_var.values()], rule)
        for old in [s for s in self.pending if s <= step]:
            del self.pending[old]

    def commit(self, step, workers):
        """Shards other than 0: applies decided `step` unless done already. A step this shard
        never heard decided (every worker that knew it died first) is applied with all the
        gradients it holds for it."""
        with self.cond:
            if step < self.applied:
                return
            for missed in range(self.applied, step):
                held = sorted(self.pending.get(missed, {}))
                if held:
                    log.warning("step %d was never committed here; applying the gradients of "
                                "workers %s", missed, held)
                self._apply(missed, held)
            self._apply(step, workers)
            self.applied = step + 1
            self.cond.notify_all()

    def reset(self, step):
        """Restored from a checkpoint at global step `step`: what was pending is void."""
        with self.cond:
            self.applied = int(step)
            self.pending.clear()
            self.arrivals.clear()
            self.decisions.clear()
            self.last_decision = (int(step) - 1, ())
            self.cond.notify_all()

    def decision(self):
        with self.cond:
            return self.last_decision

    # -- copies ----------------------------------------------------------------------------
    def snapshot(self):
        """The bookkeeping as a dict of plain values (the pending gradients' arrays shared,
        never changed in place): what a copy of the shard carries (see
        psflow.ps.sync_copy)."""
        with self.cond:
            return {"pending": {step: dict(by_worker)
                                for step, by_worker in self.pending.items()},
                    "arrivals": {step: list(w) for step, w in self.arrivals.items()},
                    "decisions": dict(self.decisions), "last_decision": self.last_decision,
                    "applied": self.applied, "dropped": self.dropped, "steps": self.steps,
                    "clocks": dict(self.clocks)}

    def replace(self, snapshot):
        """Takes a `snapshot`'s bookkeeping (another replica's) in place of its own."""
        with self.cond:
            self.pending = snapshot["pending"]
            self.arrivals = snapshot["arrivals"]
            self.decisions = snapshot["decisions"]
            self.last_decision = snapshot["last_decision"]
            self.applied = snapshot["applied"]
            self.dropped = snapshot["dropped"]
            self.steps = snapshot["steps"]
            self.clocks = snapshot["clocks"]
            self.cond.notify_all()

    # -- ssp -------------------------------------------------------------------------------
    def on_register(self, worker):
        """A (re)starting worker joins at the slowest live worker's clock."""
        with self.cond:
            others = [self.clocks.get(w, 0) for w in self.live_workers() if w != worker]
            self.clocks[worker] = min(others) if others else 0

    def ssp_barrier(self, worker, staleness):
        """Shard 0, after an ssp push from `worker`: counts the push, then waits until the
        slowest live worker is at most `staleness` steps behind this worker's next step."""
        if staleness < 0:
            raise InvalidArgumentError(f"staleness must be >= 0, got {staleness}")
        return self.ssp_wait(worker, self.ssp_count(worker), staleness)

    def ssp_count(self, worker):
        """Shard 0: counts an ssp push from `worker`; returns its clock."""
        with self.cond:
            clock = self.clocks.get(worker, 0) + 1
            self.clocks[worker] = clock
            self.cond.notify_all()
            return clock

    def ssp_wait(self, worker, clock, staleness):
        """Shard 0: waits until the slowest live worker is at most `staleness` steps behind
        `clock`, the next step of `worker`; returns `clock`."""
        if staleness < 0:
            raise InvalidArgumentError(f"staleness must be >= 0, got {staleness}")
        with self.cond:
            deadline = time.monotonic() + STEP_TIMEOUT_S
            while True:
                live = [w for w in self.live_workers() if w != worker]
                behind = [w for w in live if self.clocks.get(w, 0) < clock - staleness]
                if not behind:
                    return clock
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeadlineExceededError(
                        f"worker {worker} at step {clock} waited {STEP_TIMEOUT_S:g} s for "
                        f"worker(s) {behind} to come within {staleness} steps")
                self.cond.wait(min(WAKE_S, remaining))
