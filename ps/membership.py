"""The workers of a job as one shard sees them: who registered, who is done, who was heard
from lately, and each one's progress.

A worker that reported done, or that has not been heard from (push or heartbeat) for
DEAD_AFTER_S, has left: synchronous steps need only the live workers. A worker that has never
registered counts as live for JOIN_GRACE_S after the shard started, so a slow starter is
waited for but a worker that never comes does not block the job forever.
"""

import math
import threading
import time

from psflow import settings
from psflow.errors import InvalidArgumentError

DEAD_AFTER_S = settings.DEAD_AFTER.get()
JOIN_GRACE_S = settings.JOIN_GRACE.get()


class _Worker:
    __slots__ = ("registered", "done", "local_step", "loss", "last_seen", "pushes", "activity",
                 "examples")

    def __init__(self):
        self.registered = False
        self.done = False
        self.local_step = 0
        self.loss = math.nan
        self.last_seen = None
        self.pushes = 0
        self.activity = ""
        self.examples = 0


class Membership:
    """The `num_workers` workers of a job. Every method is safe to call from many threads.
    `all_done` is set once every worker has reported done."""

    def __init__(self, num_workers):
        if num_workers < 1:
            raise ValueError(f"a parameter server needs at least one worker, got {num_workers}")
        self.num_workers = num_workers
        self.started = time.monotonic()
        self.all_done = threading.Event()
        self._workers = {}
        self._lock = threading.Lock()

    def _worker(self, index):
        worker = self._workers.get(index)
        if worker is None:
            worker = self._workers[index] = _Worker()
        return worker

    def check(self, index):
        if not 0 <= index < self.num_workers:
            raise InvalidArgumentError(f"worker {index} is out of range: this job has "
                                       f"{self.num_workers} workers (0 to {self.num_workers - 1})")

    def _done_count(self):
        return sum(w.done for w in self._workers.values())

    def register(self, index):
        """Worker `index` has started (or started again). Returns (number of workers, how
        many are done)."""
        self.check(index)
        with self._lock:
            worker = self._worker(index)
            worker.registered = True
            worker.done = False  # a restarted worker is back
            worker.last_seen = time.monotonic()
            self.all_done.clear()  # and the job is not over after all
            return self.num_workers, self._done_count()

    def touch(self, index, pushed=False):
        """Worker `index` was just heard from (a push counts as a heartbeat)."""
        if 0 <= index < self.num_workers:
            with self._lock:
                worker = self._worker(index)
                worker.last_seen = time.monotonic()
                worker.pushes += pushed

    def heartbeat(self, index, local_step, loss, activity="", examples=0):
        """Worker `index` is alive at its `local_step` with `loss`, doing `activity`, having
        trained on `examples`. Returns membership."""
        self.check(index)
        with self._lock:
            worker = self._worker(index)
            # A worker that beats has joined, even if it registered with this shard before a
            # restart of it and never since.
            worker.registered = True
            worker.local_step = local_step
            worker.loss = loss
            worker.activity = activity
            worker.examples = examples
            worker.last_seen = time.monotonic()
            return self.num_workers, self._done_count()

    def done(self, index):
        """Worker `index` has finished (idempotent). When all have, `all_done` is set."""
        self.check(index)
        with self._lock:
            worker = self._worker(index)
            worker.done = True
            worker.last_seen = time.monotonic()
            finished = self._done_count()
        if finished >= self.num_workers:
            self.all_done.set()
        return self.num_workers, finished

    def live(self):
        """Indices of the workers that have not left."""
        now = time.monotonic()
        live = []
        with self._lock:
            for index in range(self.num_workers):
                worker = self._workers.get(index)
                if worker is not None and worker.done:  # done, even without ever joining
                    continue
                if worker is None or not worker.registered:
                    if now - self.started <= JOIN_GRACE_S:
                        live.append(index)
                elif now - worker.last_seen <= DEAD_AFTER_S:
                    live.append(index)
        return live

    def running(self):
        """Indices of the workers that registered and are still at work: not done, and heard
        from within DEAD_AFTER_S."""
        now = time.monotonic()
        with self._lock:
            return [index for index, w in sorted(self._workers.items())
                    if w.registered and not w.done and w.last_seen is not None
                    and now - w.last_seen <= DEAD_AFTER_S]

    def rows(self):
        """(task_index, registered, done, local_step, loss, last_seen_s, pushes, activity,
        examples) of every worker heard of, by index."""
        now = time.monotonic()
        with self._lock:
            return [(index, w.registered, w.done, w.local_step, w.loss,
                     (now - w.last_seen) if w.last_seen is not None else -1.0, w.pushes,
                     w.activity, w.examples)
                    for index, w in sorted(self._workers.items())]
