"""A worker's Prometheus metrics. When PSFLOW_METRICS_PORT is set, the first distributed
session of the process serves its step timings (psflow.worker.step_times) and progress on
/metrics (see psflow.monitoring); later sessions of the process take over the same server.
"""

import logging
import math
import threading

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from psflow import monitoring, settings
from .step_times import PHASES, RATE_WINDOW_S, STEP_BUCKETS_S

log = logging.getLogger(__name__)

PREFIX = "psflow_worker_"


class WorkerCollector:
    """A prometheus_client collector over the process's current distributed session."""

    def __init__(self):
        self.session = None

    def describe(self):
        return []

    def collect(self):
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
