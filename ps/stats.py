"""The counters of one shard: pushes, bytes, staleness, pulls, apply and checkpoint times.
Plain numbers under one lock, bumped once per call (never per row); GetStats and the
Prometheus collector (psflow.ps.shard_exporter) read them when asked."""

import bisect
import math
import threading
import time

STALENESS_BUCKETS = 32
# Upper bounds (seconds) of the buckets of the apply-time histogram (psflow.ps.shard_exporter).
APPLY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, math.inf)


class ShardCounters:
    """A shard's counters; every method takes `lock`, so any thread may call it."""

    def __init__(self):
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.pushes = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        self.staleness = [0] * STALENESS_BUCKETS
        self.pulls = 0  # variables and tables answered with
        self.nonfinite = 0  # gradients refused for holding NaN or Inf
        self.apply_buckets = [0] * len(APPLY_BUCKETS_S)  # pushes applied, by time taken
        self.apply_seconds = 0.0
        self.checkpoints = 0  # shard files written, their total and last time and size
        self.checkpoint_seconds = 0.0
        self.last_checkpoint = (0.0, 0)

    @property
    def traffic(self):
        """Bytes received and sent so far."""
        return self.bytes_received + self.bytes_sent

    def count_push(self, received, staleness):
        """A push of `received` bytes whose gradients had `staleness` (a list)."""
        with self.lock:
            self.pushes += 1
            self.bytes_received += received
            for s in staleness:
                self.staleness[min(s, STALENESS_BUCKETS - 1)] += 1

    def count_received(self, received):
        with self.lock:
            self.bytes_received += received

    def count_gradients(self, held):
        """A gradient received for each variable or table in `held`."""
        with self.lock:
            for var in held:
                var.pushes += 1

    def count_pulls(self, sent, held):
        """`sent` bytes answered with the variables or tables in `held`, one pull each."""
        with self.lock:
            self.bytes_sent += sent
            for var in held:
                var.pulls += 1
                self.pulls += 1

    def count_nonfinite(self):
        with self.lock:
            self.nonfinite += 1

    def count_apply(self, seconds):
        with self.lock:
            self.apply_buckets[bisect.bisect_left(APPLY_BUCKETS_S, seconds)] += 1
            self.apply_seconds += seconds

    def count_checkpoint(self, seconds, size):
        with self.lock:
            self.checkpoints += 1
            self.checkpoint_seconds += seconds
            self.last_checkpoint = (seconds, size)

    def stats(self, **others):
        """The counters as StatsResponse fields, with `others` (the fields they do not hold)."""
        now = time.monotonic()
        with self.lock:
            return {"pushes": self.pushes, "bytes_received": self.bytes_received,
                    "bytes_sent": self.bytes_sent, "staleness_histogram": list(self.staleness),
                    "nonfinite": self.nonfinite, "uptime_s": now - self.started,
                    "pulls": self.pulls, **others}

    def timings(self):
        """(apply-time bucket counts by APPLY_BUCKETS_S, their seconds, checkpoints written,
        their seconds, (seconds, bytes) of the last)."""
        with self.lock:
            return (list(self.apply_buckets), self.apply_seconds, self.checkpoints,
                    self.checkpoint_seconds, self.last_checkpoint)
