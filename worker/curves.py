"""The job's curves in TensorBoard: the chief looks at every parameter server at intervals and
writes what the job did in between as scalars at the job's global step, beside the script's
own summaries.

    psflow/loss                      mean of the workers' last reported losses
    psflow/global_steps_per_sec      global steps per second
    psflow/examples_per_sec          examples trained on per second, all workers
    psflow/staleness_p50, _p90, _p99 staleness of the gradients applied in the interval
    psflow/ps_<i>/pushes_per_sec     pushes shard i received per second

The curves never affect training: a shard that does not answer is left out of that write, and
nothing here raises into the session.
"""

import itertools
import logging
import os
import threading

from psflow import settings
from .jobstats import Look, rates

log = logging.getLogger(__name__)

INTERVAL_ENV = settings.SUMMARY_SECS.name
# How long one shard's GetStats may take before that shard is left out of a write.
STATS_TIMEOUT_S = 2.0
# tensorboardX names an event file after the second it was opened and the host, and would
# truncate a file of the same name: the curves' files also carry the process, a count and
# this ending, so they never take the name of the script's own or of an earlier session's.
FILENAME_SUFFIX = ".psflow"
_event_files = itertools.count(1)
PERCENTILES = ((0.5, "p50"), (0.9, "p90"), (0.99, "p99"))


def interval_from_env():
    """Seconds between two writes: PSFLOW_SUMMARY_SECS, else 10."""
    return settings.SUMMARY_SECS.get()


def scalars(before, now):
    """{tag: value} of the interval from Look `before` to Look `now`. What the interval
    cannot tell is left out: the loss before any worker reported one, the global step's rate
    when it went back (the job was restored from a checkpoint), the staleness when no
    gradient was applied, the pushes of a shard that did not answer both times."""
    values = {}
    losses = now.losses()
    if losses:
        values["psflow/loss"] = sum(losses) / len(losses)
    between = rates(before, now)
    if between.steps_per_s is not None:
        values["psflow/global_steps_per_sec"] = between.steps_per_s
    values["psflow/examples_per_sec"] = between.examples_per_s
    for q, name in PERCENTILES:
        staleness = between.staleness_percentile(q)
        if staleness is not None:
            values[f"psflow/staleness_{name}"] = float(staleness)
    for shard, pushes in sorted(between.shard_pushes_per_s.items()):
        values[f"psflow/ps_{shard}/pushes_per_sec"] = pushes
    return values


class JobCurves(threading.Thread):
    """Writes the job's curves (see the module) into `logdir` every `interval` seconds
    (default: PSFLOW_SUMMARY_SECS, else 10) from the stats of the shards behind `clients`, and
    once more when stopped. Run by the chief's session; `stop()` makes the last write and
    closes the event file."""

    def __init__(self, clients, logdir, interval=None, timeout=STATS_TIMEOUT_S):
        super().__init__(name="psflow-curves", daemon=True)
        self.interval = interval_from_env() if interval is None else float(interval)
        if not self.interval > 0:
            raise ValueError(f"JobCurves: the interval must be above 0 seconds, got "
                             f"{interval!r}")
        self.clients = list(clients)
        self.logdir = str(logdir)
        self.timeout = timeout
        # Imported here: it takes about 0.3 s, which only a chief that writes curves pays.
        from tensorboardX import SummaryWriter
        suffix = f".{os.getpid()}.{next(_event_files)}{FILENAME_SUFFIX}"
        self._writer = SummaryWriter(self.logdir, filename_suffix=suffix)
        self._lock = threading.Lock()  # one write at a time, and none after closing
        self._stopping = threading.Event()
        self._closed = False
        self._last = None  # the last look written (or the first one taken)
        self._previous = None  # the one written before it

    @classmethod
    def started(cls, clients, logdir):
        """A running JobCurves, or None (logged) when PSFLOW_SUMMARY_SECS is not a number of
        seconds or `logdir` cannot hold an event file: training goes on without curves."""
        try:
            job_curves = cls(clients, logdir)
        except (ValueError, OSError) as exc:
            log.error("%s; the job's curves are not written", exc)
            return None
        job_curves.start()
        return job_curves

    def look(self):
        """Every shard's stats now (None for a shard that did not answer)."""
        return Look.take(self.clients, self.timeout)

    def run(self):
        try:
            self.write(self.look())  # the start of the first interval: nothing to write yet
            while not self._stopping.wait(self.interval):
                self.write(self.look())
        except Exception:  # the curves stop; training goes on
            log.exception("the job's curves stopped")

    def write(self, now):
        """Writes the curves of the interval that ends at Look `now`; returns the number of
        scalars written. Without shard 0's stats (the global step) nothing is written. A look
        less than half an interval after the last one (the last write, at the end) is
        measured from the one before, so a rate is never taken over a few milliseconds."""
        with self._lock:
            if self._closed or now.global_step is None:
                return 0
            before = self._last
            if before is not None and self._previous is not None and \
                    now.when - before.when < self.interval / 2:
                before = self._previous
            self._previous, self._last = self._last, now
            if before is None:
                return 0
            values = scalars(before, now)
            step = int(now.global_step)
            for tag, value in values.items():
                self._writer.add_scalar(tag, value, step)
            return len(values)

    def stop(self):
        """Ends the thread, writes the last curves and closes the event file. Never raises."""
        self._stopping.set()
        if self.is_alive():
            self.join()
        if self._closed:
            return
        try:
            self.write(self.look())
        except Exception:
            log.exception("the job's last curves were not written")
        self.close()

    def close(self):
        """Flushes and closes the event file."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._writer.close()
            except Exception:
                log.exception("the job's curves could not be closed in %s", self.logdir)
