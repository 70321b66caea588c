"""psflow-serve's Prometheus metrics, served on the REST port at
/monitoring/prometheus/metrics.

The predict path only adds to plain counters (`RequestStats.record`); the collector turns them
and the managers' version states into families when scraped. Every family carries the model
and the version; a request that failed before a version was chosen (an unknown version or
label, a model with none available) has version "", and one naming a model not served has
model "" too, so random names cannot grow the label sets.
"""

import math
import threading

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from psflow.monitoring import cumulative

PREFIX = "psflow_serving_"
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
                     5.0, math.inf)
STATES = ("START", "LOADING", "AVAILABLE", "UNLOADING", "END")


class RequestStats:
    """Predict requests, errors and latencies per (model, version), as plain counters."""

    def __init__(self):
        self._lock = threading.Lock()
        self._requests = {}  # (model, version) -> [count, [per-bucket counts], seconds]
        self._errors = {}  # (model, version, code name) -> count

    def record(self, model, version, seconds, code=None):
        """One request to `model` answered by `version` ("" for none) in `seconds`; `code`
        is the error's code name (None: succeeded)."""
        key = (model, version)
        bucket = next(i for i, bound in enumerate(LATENCY_BUCKETS_S) if seconds <= bound)
        with self._lock:
            entry = self._requests.get(key)
            if entry is None:
                entry = self._requests[key] = [0, [0] * len(LATENCY_BUCKETS_S), 0.0]
            entry[0] += 1
            entry[1][bucket] += 1
            entry[2] += seconds
            if code is not None:
                self._errors[key + (code,)] = self._errors.get(key + (code,), 0) + 1

    def snapshot(self):
        """({(model, version): (count, bucket counts, seconds)}, {(model, version, code): n})."""
        with self._lock:
            return ({key: (n, list(buckets), seconds)
                     for key, (n, buckets, seconds) in self._requests.items()},
                    dict(self._errors))


class ServingCollector:
    """A prometheus_client collector over a ServerCore's stats and managers."""

    def __init__(self, core):
        self.core = core

    def describe(self):
        return []  # models and versions come and go

    def collect(self):
        requests, errors = self.core.stats.snapshot()
        labels = ["model", "version"]
        count = CounterMetricFamily(PREFIX + "requests", "Predict requests, by the model and "
                                    "the version that answered them", labels=labels)
        failed = CounterMetricFamily(PREFIX + "errors", "Predict requests answered with an "
                                     "error, by its code", labels=labels + ["code"])
        latency = HistogramMetricFamily(PREFIX + "request_latency_seconds",
                                        "Time from a predict request's arrival in the server "
                                        "core to its outputs", labels=labels)
        for (model, version), (n, buckets, seconds) in sorted(requests.items()):
            count.add_metric([model, version], n)
            latency.add_metric([model, version], cumulative(buckets, LATENCY_BUCKETS_S),
                               sum_value=seconds)
        for (model, version, code), n in sorted(errors.items()):
            failed.add_metric([model, version, code], n)
        state = GaugeMetricFamily(PREFIX + "model_version_state",
                                  "1 for each version's current state (TF Serving's names)",
                                  labels=labels + ["state"])
        for name, manager in sorted(self.core.managers.items()):
            for status in manager.statuses():
                for each in STATES:
                    state.add_metric([name, str(status.version), each],
                                     1 if status.state == each else 0)
        yield from (count, failed, latency, state)


def metrics_text(core):
    """The Prometheus text exposition of `core`'s metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServingCollector(core))
    return generate_latest(registry)
