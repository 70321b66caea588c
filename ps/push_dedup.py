"""Repeated pushes, answered once. A push may carry an id (worker, incarnation, sequence,
index). A push whose id the shard has seen recently is not applied again: it gets the first
one's answer, so a retry after a lost reply, or a step run again after another shard
restarted, never applies a gradient twice. Restoring a checkpoint forgets the ids, since the
state they changed is gone."""

import collections
import threading

from psflow.errors import FailedPreconditionError
from .sync import STEP_TIMEOUT_S

# Push ids remembered for retries: a retry comes within seconds, long before this many more
# pushes arrive.
PUSH_IDS_KEPT = 4096


class _Answer:
    """The answer to a push with an id, once it is known (`ready`); None if it failed."""

    __slots__ = ("result", "ready")

    def __init__(self):
        self.result = None
        self.ready = threading.Event()


class PushDedup:
    """The answers of the last PUSH_IDS_KEPT pushes, by (worker, push id)."""

    def __init__(self):
        self._answers = collections.OrderedDict()  # (worker, push id) -> _Answer
        self._lock = threading.Lock()

    def once(self, worker, push_id, apply):
        """apply()'s result, computed by the first push with this id; a repeat waits for it
        (and goes ahead itself if the first one failed, since nothing of it was applied)."""
        key = (worker, push_id)
        while True:
            with self._lock:
                answer = self._answers.get(key)
                if answer is None:
                    answer = self._answers[key] = _Answer()
                    while len(self._answers) > PUSH_IDS_KEPT:
                        self._answers.popitem(last=False)
                    break
            if not answer.ready.wait(STEP_TIMEOUT_S):
                raise FailedPreconditionError(f"push {push_id} of worker {worker} is still "
                                              f"being applied after {STEP_TIMEOUT_S:g} s")
            if answer.result is not None:
                return answer.result
        try:
            answer.result = apply()
            return answer.result
        except BaseException:
            with self._lock:
                if self._answers.get(key) is answer:
                    del self._answers[key]
            raise
        finally:
            answer.ready.set()

    def answers(self):
        """[((worker, push id), answer)] of the pushes applied, oldest first."""
        with self._lock:
            return [(key, answer.result) for key, answer in self._answers.items()
                    if answer.ready.is_set() and answer.result is not None]

    def remember(self, answers):
        """Takes [((worker, push id), answer)] as answers of pushes applied (a copy of another
        replica's), so that a retry of one is answered, not applied."""
        with self._lock:
            for key, result in answers:
                answer = self._answers[key] = _Answer()
                answer.result = result
                answer.ready.set()
            while len(self._answers) > PUSH_IDS_KEPT:
                self._answers.popitem(last=False)

    def clear(self):
        """Forgets every id (the state their pushes changed is gone)."""
        with self._lock:
            self._answers.clear()
