"""A worker's step timings and its Prometheus metrics.

`StepTimes` is what the distributed session records per run: seconds spent pulling values,
computing and pushing gradients, the runs and the examples trained on. It costs a few clock
reads per run. When PSFLOW_METRICS_PORT is set, the first distributed session of the process
serves them on /metrics (see psflow.monitoring); later sessions of the process take over the
same server.
"""

import bisect
import collections
import logging
import math
import threading
import time

from psflow import monitoring, settings

log = logging.getLogger(__name__)

PREFIX = "psflow_worker_"
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


class WorkerCollector:
    """A prometheus_client collector over the process's current distributed session."""

    def __init__(self):
        self.session = None

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily)
        session = self.session
        if session is None:
            return
        worker = str(session.task.task_index)
        times = session.step_times
        runs, examples, seconds, buckets, total = times.snapshot()

        def one(kind, name, text, value):
            metric = kind(PREFIX + name, text, labels=["worker"])
            metric.add_metric([worker], value)
            return metric

        phases = CounterMetricFamily(PREFIX + "step_phase_seconds",
                                     "Time in each phase of the worker's runs: pulling values, "
                                     "computing, pushing gradients", labels=["worker", "phase"])
        for phase in PHASES:
            phases.add_metric([worker, phase], seconds[phase])
        yield phases
        histogram = HistogramMetricFamily(PREFIX + "step_seconds", "Time of each run",
                                          labels=["worker"])
        histogram.add_metric([worker], monitoring.cumulative(buckets, STEP_BUCKETS_S),
                             sum_value=total)
        yield histogram
        yield one(CounterMetricFamily, "runs", "Runs of the graph (steps)", runs)
        yield one(CounterMetricFamily, "examples", "Examples the training runs consumed",
                  examples)
        yield one(GaugeMetricFamily, "examples_per_second",
                  f"Examples per second over the last {RATE_WINDOW_S:g} s",
                  times.examples_per_second())
        yield one(GaugeMetricFamily, "local_step", "The worker's local step",
                  session.local_step)
        if not math.isnan(session.last_loss):
            yield one(GaugeMetricFamily, "loss", "The last loss the worker's train op computed",
                      session.last_loss)


_collector = WorkerCollector()
_served = []  # the server, once started
_lock = threading.Lock()


def watch(session):
    """Makes `session` the one this process's /metrics describes, serving them first when
    PSFLOW_METRICS_PORT asks for it (on PSFLOW_METRICS_HOST, default loopback). A bad port
    or one that cannot be served is logged; training goes on without metrics."""
    _collector.session = session
    with _lock:
        if _served:
            return
        try:
            port = monitoring.port_from_env()
        except ValueError as exc:
            log.error("%s; this worker serves no metrics", exc)
            _served.append(None)
            return
        if port is None:
            return
        host = settings.METRICS_HOST.get() or "127.0.0.1"
        try:
            server, _ = monitoring.serve(_collector, port, host,
                                         what=f"worker {session.task.task_index}'s metrics")
        except OSError as exc:
            log.error("%s; this worker serves no metrics", exc)
            server = None
        _served.append(server)
