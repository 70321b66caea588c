"""A worker's step timings: what the distributed session records per run (seconds spent
pulling values, computing and pushing gradients, the runs and the examples trained on), at the
cost of a few clock reads per run. psflow.worker.worker_exporter serves them to Prometheus.
"""

import bisect
import collections
import math
import threading
import time

# Upper bounds (seconds) of the step-time histogram's buckets.
STEP_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                  10.0, math.inf)
# examples/s is the rate over about this many seconds (sampled by the heartbeat).
RATE_WINDOW_S = 5.0
PHASES = ("pull", "compute", "push")


def batch_size(feeds):
    """The examples a run's feeds hold: the leading dimension of the first fed array that has
    one (a batch), else 0."""
    for value in feeds.values():
        shape = getattr(value, "shape", None)
        if shape:
            return int(shape[0])
        if isinstance(value, (list, tuple)) and value:
            return len(value)
    return 0


class StepTimes:
    """Per-run timings of one worker; `record` from the run's thread, the rest from any."""

    def __init__(self):
        self.runs = 0
        self.examples = 0
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.buckets = [0] * len(STEP_BUCKETS_S)
        self.total_seconds = 0.0
        self._lock = threading.Lock()
        self._samples = collections.deque(maxlen=64)  # (time, examples) for examples/s

    def record(self, pull, compute, push, examples):
        took = pull + compute + push
        index = bisect.bisect_left(STEP_BUCKETS_S, took)
        with self._lock:
            self.runs += 1
            self.examples += examples
            seconds = self.seconds
            seconds["pull"] += pull
            seconds["compute"] += compute
            seconds["push"] += push
            self.buckets[index] += 1
            self.total_seconds += took

    def sample(self, now=None):
        """Notes the examples so far (the heartbeat calls it about once a second)."""
        with self._lock:
            self._samples.append((time.monotonic() if now is None else now, self.examples))

    def examples_per_second(self):
        """Examples/s over the last RATE_WINDOW_S of samples; 0.0 before two samples."""
        with self._lock:
            samples = list(self._samples)
        if len(samples) < 2:
            return 0.0
        last_when, last = samples[-1]
        first_when, first = next(((w, e) for w, e in samples if last_when - w <= RATE_WINDOW_S),
                                 samples[0])
        if last_when <= first_when:
            first_when, first = samples[-2]
        return (last - first) / (last_when - first_when) if last_when > first_when else 0.0

    def snapshot(self):
        with self._lock:
            return (self.runs, self.examples, dict(self.seconds), list(self.buckets),
                    self.total_seconds)
