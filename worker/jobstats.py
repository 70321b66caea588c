"""A running job as its parameter servers see it: every shard's GetStats, and the rates
between two looks. The progress line, `launch --status` and the chief's TensorBoard curves
read the job through this module.
"""

import dataclasses
import math
import statistics
import time

from psflow.errors import PsflowError
from psflow.proto import psflow_pb2 as pb


def fetch(clients, timeout=None, errors=None):
    """[StatsResponse or None] of every shard, in shard order (None: the shard did not
    answer). `errors`, a dict, receives {shard: why} of the shards that did not answer."""
    out = []
    for shard, client in enumerate(clients):
        try:
            out.append(client.call("GetStats", pb.StatsRequest(), timeout=timeout,
                                   wait_for_ready=False))
        except (PsflowError, ValueError) as exc:  # ValueError: the channel is closed
            out.append(None)
            if errors is not None:
                errors[shard] = str(exc) or type(exc).__name__
    return out


def percentile(histogram, q):
    """The `q`-quantile (0..1, nearest rank) of a histogram whose bucket k counts the value k
    (the last bucket: k and beyond); None when it is empty."""
    if not 0 <= q <= 1:
        raise ValueError(f"a quantile is from 0 to 1, got {q}")
    total = sum(histogram)
    if total <= 0:
        return None
    # The smallest value with at least ceil(q * total) counts at or below it; the tolerance
    # keeps q * total = 7.000000000000001 (q = 0.07, 100 counts) at rank 7.
    rank = max(1, math.ceil(q * total - 1e-9))
    seen = 0
    for value, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            return value
    return len(histogram) - 1


@dataclasses.dataclass
class Look:
    """Every shard's stats at one moment (monotonic seconds)."""

    when: float
    shards: list  # StatsResponse or None, by shard
    errors: dict = dataclasses.field(default_factory=dict)  # shard -> why it did not answer

    @classmethod
    def take(cls, clients, timeout=None):
        when, errors = time.monotonic(), {}
        return cls(when, fetch(clients, timeout, errors), errors)

    @property
    def chief(self):
        """Shard 0's stats (the global step, the workers' reports), or None."""
        return self.shards[0] if self.shards else None

    @property
    def global_step(self):
        chief = self.chief
        return chief.global_step if chief is not None else None

    def workers(self):
        """{task index: WorkerStats} as shard 0 knows them."""
        chief = self.chief
        return {w.task_index: w for w in chief.workers} if chief is not None else {}

    def losses(self):
        """The workers' last reported losses (NaN left out)."""
        return [w.loss for w in self.workers().values() if not math.isnan(w.loss)]


def _rate(now, before, seconds):
    return (now - before) / seconds if seconds > 0 else 0.0


def _increase(old, new):
    """How much a counter that starts at 0 grew from `old` to `new`; one that went back
    started again (its process restarted), so all of `new` is new."""
    return new - old if new >= old else new


@dataclasses.dataclass
class Rates:
    """What happened between two Looks: per-second rates and the staleness of the gradients
    applied in between."""

    seconds: float
    steps_per_s: float | None  # None: shard 0 did not answer both times, or started again
    examples_per_s: float
    shard_pushes_per_s: dict  # shard -> pushes/s (shards that answered both times)
    worker_steps_per_s: dict  # task index -> local steps/s (workers not done)
    staleness: list  # the histogram of the interval, all shards summed
    shard_staleness: dict = dataclasses.field(default_factory=dict)  # shard -> its histogram
    worker_examples_per_s: dict = dataclasses.field(default_factory=dict)  # task index -> /s
    empty_shards: set = dataclasses.field(default_factory=set)  # holding no variable or table

    def staleness_percentile(self, q):
        return percentile(self.staleness, q)

    def shard_staleness_percentile(self, shard, q):
        """The `q`-quantile of the staleness of what `shard` applied in the interval; None
        when it applied nothing (or did not answer both times)."""
        return percentile(self.shard_staleness.get(shard, ()), q)

    def slowest_worker(self, factor=0.5):
        """(task index, steps/s) of a running worker below `factor` x the median of the
        others, or None when none stands out (or there are fewer than two)."""
        rates = self.worker_steps_per_s
        if len(rates) < 2:
            return None
        index = min(rates, key=rates.get)
        median = statistics.median(v for k, v in rates.items() if k != index)
        return (index, rates[index]) if median > 0 and rates[index] < factor * median \
            else None

    def hottest_shard(self, factor=1.5):
        """(shard, pushes/s) of a shard above `factor` x the mean of the others, or None when
        none stands out (or there is one shard). Shards that hold nothing, and so get no
        pushes, are not compared."""
        rates = {shard: value for shard, value in self.shard_pushes_per_s.items()
                 if shard not in self.empty_shards}
        if len(rates) < 2:
            return None
        shard = max(rates, key=rates.get)
        others = [v for k, v in rates.items() if k != shard]
        mean = sum(others) / len(others)
        return (shard, rates[shard]) if rates[shard] > factor * max(mean, 1e-9) \
            and rates[shard] > 0 else None


def rates(before, now):
    """The Rates from Look `before` to Look `now`. A shard whose uptime went back was
    restarted in between: its counters count from 0 again."""
    seconds = now.when - before.when
    steps = None
    old_chief, new_chief = before.chief, now.chief
    if old_chief is not None and new_chief is not None and \
            new_chief.uptime_s >= old_chief.uptime_s and \
            new_chief.global_step >= old_chief.global_step:
        steps = _rate(new_chief.global_step, old_chief.global_step, seconds)
    pushes, shard_staleness, staleness, empty = {}, {}, [], set()
    for shard, (old, new) in enumerate(zip(before.shards, now.shards, strict=False)):
        if old is None or new is None:
            continue
        if new.variables == 0 and not new.tables:
            empty.add(shard)
        if new.uptime_s < old.uptime_s:
            old = pb.StatsResponse()
        pushes[shard] = _rate(_increase(old.pushes, new.pushes), 0, seconds)
        old_counts = list(old.staleness_histogram)
        old_counts += [0] * (len(new.staleness_histogram) - len(old_counts))
        delta = [max(b - a, 0) for a, b in zip(old_counts, new.staleness_histogram, strict=False)]
        shard_staleness[shard] = delta
        if len(staleness) < len(delta):
            staleness += [0] * (len(delta) - len(staleness))
        for k, count in enumerate(delta):
            staleness[k] += count
    old_workers, new_workers = before.workers(), now.workers()
    worker_steps, worker_examples = {}, {}
    for index, worker in new_workers.items():
        old = old_workers.get(index)
        if old is None:
            continue
        worker_examples[index] = _rate(_increase(old.examples, worker.examples), 0, seconds)
        if worker.registered and not worker.done:
            worker_steps[index] = _rate(_increase(old.local_step, worker.local_step), 0,
                                        seconds)
    return Rates(seconds, steps, sum(worker_examples.values()), pushes, worker_steps,
                 staleness, shard_staleness, worker_examples, empty)
