"""A running job as its parameter servers see it: every shard's GetStats, and the rates
between two looks. The progress line, `launch --status` and the chief's TensorBoard curves
read the job through this module.
"""

import dataclasses
import math
import time

from psflow.errors import PsflowError
from psflow.proto import psflow_pb2 as pb


def fetch(clients, timeout=None):
    """[StatsResponse or None] of every shard, in shard order (None: the shard did not
    answer)."""
    out = []
    for client in clients:
        try:
            out.append(client.call("GetStats", pb.StatsRequest(), timeout=timeout,
                                   wait_for_ready=False))
        except (PsflowError, ValueError):  # ValueError: the channel is closed
            out.append(None)
    return out


def percentile(histogram, q):
    """The `q`-quantile (0..1) of a histogram whose bucket k counts the value k (the last
    bucket: k and beyond); None when it is empty."""
    total = sum(histogram)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for value, count in enumerate(histogram):
        seen += count
        if seen >= rank and count:
            return value
    return len(histogram) - 1


@dataclasses.dataclass
class Look:
    """Every shard's stats at one moment (monotonic seconds)."""

    when: float
    shards: list  # StatsResponse or None, by shard

    @classmethod
    def take(cls, clients, timeout=None):
        return cls(time.monotonic(), fetch(clients, timeout))

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


@dataclasses.dataclass
class Rates:
    """What happened between two Looks: per-second rates and the staleness of the gradients
    applied in between."""

    seconds: float
    steps_per_s: float | None
    examples_per_s: float
    shard_pushes_per_s: dict  # shard -> pushes/s (shards that answered both times)
    worker_steps_per_s: dict  # task index -> local steps/s (workers not done)
    staleness: list  # the histogram of the interval, all shards summed

    def staleness_percentile(self, q):
        return percentile(self.staleness, q)

    def slowest_worker(self, factor=0.5):
        """(task index, steps/s) of a running worker below `factor` x the median of the
        others, or None when none stands out (or there are fewer than two)."""
        rates = self.worker_steps_per_s
        if len(rates) < 2:
            return None
        index = min(rates, key=rates.get)
        others = sorted(v for k, v in rates.items() if k != index)
        median = others[len(others) // 2]
        return (index, rates[index]) if median > 0 and rates[index] < factor * median \
            else None

    def hottest_shard(self, factor=1.5):
        """(shard, pushes/s) of a shard above `factor` x the mean of the others, or None when
        none stands out (or there is one shard)."""
        rates = self.shard_pushes_per_s
        if len(rates) < 2:
            return None
        shard = max(rates, key=rates.get)
        others = [v for k, v in rates.items() if k != shard]
        mean = sum(others) / len(others)
        return (shard, rates[shard]) if rates[shard] > factor * max(mean, 1e-9) \
            and rates[shard] > 0 else None


def rates(before, now):
    """The Rates from Look `before` to Look `now`."""
    seconds = now.when - before.when
    steps = None
    if before.global_step is not None and now.global_step is not None:
        steps = _rate(now.global_step, before.global_step, seconds)
    pushes, staleness = {}, []
    for shard, (old, new) in enumerate(zip(before.shards, now.shards)):
        if old is None or new is None:
            continue
        pushes[shard] = _rate(new.pushes, old.pushes, seconds)
        delta = [b - a for a, b in zip(old.staleness_histogram, new.staleness_histogram)]
        if len(staleness) < len(delta):
            staleness += [0] * (len(delta) - len(staleness))
        for k, count in enumerate(delta):
            staleness[k] += max(count, 0)
    old_workers, new_workers = before.workers(), now.workers()
    worker_steps, examples = {}, 0.0
    for index, worker in new_workers.items():
        old = old_workers.get(index)
        if old is None:
            continue
        examples += max(worker.examples - old.examples, 0)
        if worker.registered and not worker.done:
            worker_steps[index] = _rate(worker.local_step, old.local_step, seconds)
    return Rates(seconds, steps, _rate(examples, 0.0, seconds), pushes, worker_steps,
                 staleness)
