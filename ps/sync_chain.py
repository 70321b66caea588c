"""Synchronous and bounded-staleness training on a shard run as a chain of replicas (the
steps themselves: psflow.ps.sync; the chain: docs/replication.md).

Every replica applies the same writes in the same order, so whatever changes a step's state
is a write of the shard's log, and every wait happens outside the order lock:

- A sync or ssp push is recorded (its gradients pending, shard 0: among the step's arrivals;
  ssp: applied, and its worker's clock counted) under the order lock and passed down the
  chain like any push; shard 0's head answers it only afterwards.
- A Pull or PullRows carrying `commit` (shards other than 0) applies a decided step: a write.
- Which workers make up a step depends on which are live, a matter of each replica's clock:
  the head alone decides, and its decision travels down the chain as a write of its own
  (SYNC_DECISION, a StepDecision's bytes) that every replica applies. A pusher is answered
  once the tail acknowledged the decision, so a decision a worker hands on to the other
  shards is on every replica of shard 0: a new head never decides that step otherwise.
- ssp: the head waits at the staleness bound after the push was acknowledged; the wait
  changes nothing.

A repeated push (its id, see psflow.ps.push_dedup) is not recorded again, at the same head or
a new one; it waits for its step's decision as the first one did.
"""

import time

from psflow.errors import DeadlineExceededError
from psflow.proto import psflow_pb2 as pb
from .replication import SYNC_DECISION, Later, is_write
from .shard_store import PushResult
from .sync import STEP_TIMEOUT_S, WAKE_S

__all__ = ["ChainSteps", "SYNC_DECISION"]


class ChainSteps:
    """The waiting half of sync and ssp pushes at the head of a chain of `store`'s shard
    (`replication`: its ps.replication.Replication)."""

    def __init__(self, store, replication):
        self.store = store
        self.replication = replication
        self._deciding = False  # a waiter is writing a decision (under store.sync.cond)

    def in_chain(self, consistency):
        """Whether a push in `consistency` is recorded now and waited for afterwards."""
        return consistency.mode != "async" and self.replication.config.epoch >= 1

    def settle_read(self, method, request):
        """Before shard 0's head of a chain that trains synchronously or with bounded
        staleness answers a read (a `method` "Pull" or "PullRows" that writes nothing): waits
        until the tail acknowledged every write applied here, so that no worker reads a step
        decided here that a new head might not hold (it would hand the decision on, or push
        for the step after it). A write's answer needs no wait: it comes after the writes
        before it were acknowledged."""
        config = self.replication.config
        if not self.store.holds_global_step or config.epoch == 0 or not config.is_head or \
                is_write(method, request) or \
                not self.store.sync.in_use():
            return
        self.replication.wait_acknowledged(time.monotonic() + STEP_TIMEOUT_S, method)

    def later(self, worker, step, consistency, recorded, answer):
        """The push's answer once recorded: on shard 0, answer(PushResult) after the step's
        decision (sync) or the staleness bound (ssp); elsewhere answer(recorded) at once."""
        if not self.store.holds_global_step:
            return answer(recorded)
        return Later(lambda: answer(self._finish(worker, step, consistency, recorded)))

    def _finish(self, worker, step, consistency, recorded):
        store = self.store
        deadline = time.monotonic() + STEP_TIMEOUT_S
        if consistency.mode == "ssp":
            sync = store.sync
            with sync.cond:
                clock = sync.clocks.get(worker, 0)
            sync.ssp_wait(worker, clock, consistency.staleness)
            # The global step it answers is one every replica holds (as a read's).
            self.replication.wait_acknowledged(deadline, "Push")
            return recorded._replace(global_step=store.global_step)
        if recorded.dropped:
            return recorded
        workers = self._await_decision(step, consistency.replicas_to_aggregate, deadline)
        self.replication.wait_acknowledged(deadline, "Push")
        return PushResult([], store.reported_global_step(), worker not in workers,
                          (step, workers))

    def _await_decision(self, step, replicas, deadline):
        """The workers of `step`'s decision; a waiter that finds enough pushes for it (and
        nobody deciding) writes the decision itself."""
        sync = self.store.sync
        while True:
            with sync.cond:
                workers = sync.decisions.get(step)
                if workers is not None:
                    return workers
                if self._deciding or sync.ready(step, replicas) is None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        waiting = sorted(set(sync.live_workers()) -
                                         set(sync.arrivals.get(step, ())))
                        raise DeadlineExceededError(
                            f"step {step} waited {STEP_TIMEOUT_S:g} s for gradients; it has "
                            f"them from {sorted(sync.arrivals.get(step, ()))}, still waiting "
                            f"for worker(s) {waiting}")
                    sync.cond.wait(min(WAKE_S, remaining))
                    continue
                self._deciding = True
            try:
                self.replication.write_own(SYNC_DECISION, lambda: self._decide(step, replicas))
            finally:
                with sync.cond:
                    self._deciding = False
                    sync.cond.notify_all()

    def _decide(self, step, replicas):
        """Under the order lock: applies `step`'s decision; returns its bytes (None when
        there is nothing to decide after all)."""
        sync = self.store.sync
        with sync.cond:
            workers = sync.ready(step, replicas)
            if workers is None:
                return None
            sync.apply_decision(step, workers)
        return pb.StepDecision(step=step, workers=workers).SerializeToString()

    def apply(self, data):
        """A replica applies the head's decision (a StepDecision's bytes) forwarded."""
        decision = pb.StepDecision.FromString(data)
        self.store.sync.apply_decision(decision.step, tuple(decision.workers))
