"""A parameter server's Prometheus metrics, read from its ShardStore when scraped.

Every family carries the shard's index as the `shard` label. Counters end in `_total`, times
are in seconds and sizes in bytes, as Prometheus's naming conventions ask. Nothing here runs
per push: the store keeps plain counters, and this collector turns them into families only
when `/metrics` is asked for.
"""

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    SummaryMetricFamily,
)

from psflow.monitoring import bucket_bound, cumulative
from .stats import APPLY_BUCKETS_S

PREFIX = "psflow_ps_"
# Upper bounds of the staleness histogram's buckets (the store counts each staleness apart).
STALENESS_BOUNDS = (0, 1, 2, 4, 8, 16)


class ShardCollector:
    """A prometheus_client collector over one shard's store (and its publisher, when given:
    the parameter stream to serving)."""

    def __init__(self, store, publisher=None):
        self.store = store
        self.publisher = publisher

    def describe(self):
        return []  # families are known only when collected (variables come and go)

    def collect(self):
        store = self.store
        shard = str(store.shard)
        stats = store.stats()

        def family(kind, name, text, labels=(), **extra):
            return kind(PREFIX + name, text, labels=["shard", *labels], **extra)

        by_variable = store.variable_stats()
        tables = store.table_stats()
        table_counters = store.table_counters()
        pushes = family(CounterMetricFamily, "gradients_received",
                        "Gradients received, by variable or table", ["variable"])
        pulls = family(CounterMetricFamily, "pulls",
                       "Pulls answered with the variable's values or the table's rows",
                       ["variable"])
        rows = family(GaugeMetricFamily, "variable_rows",
                      "Rows of each variable or table held here", ["variable"])
        size = family(GaugeMetricFamily, "variable_bytes",
                      "Bytes of each variable's values (tables: index, rows and slots)",
                      ["variable"])
        for name, n_rows, n_bytes, n_pushes, n_pulls in by_variable:
            pushes.add_metric([shard, name], n_pushes)
            pulls.add_metric([shard, name], n_pulls)
            rows.add_metric([shard, name], n_rows)
            size.add_metric([shard, name], n_bytes)
        for name, table in sorted(tables.items()):
            n_pushes, n_pulls = table_counters.get(name, (0, 0))
            pushes.add_metric([shard, name], n_pushes)
            pulls.add_metric([shard, name], n_pulls)
            rows.add_metric([shard, name], table["rows"])
            size.add_metric([shard, name], table["bytes"])
        yield from (pushes, pulls, rows, size)

        for name, field, text in (
                ("table_rows_created", "created", "Rows created in each embedding table"),
                ("table_rows_filtered", "filtered",
                 "Lookups of keys not admitted yet (counter filter)"),
                ("table_rows_evicted", "evicted", "Rows evicted from each embedding table"),
                ("table_dropped_gradients", "dropped_gradients",
                 "Table gradients dropped for keys without a row")):
            counter = family(CounterMetricFamily, name, text, ["table"])
            for table_name, table in sorted(tables.items()):
                counter.add_metric([shard, table_name], table[field])
            yield counter

        simple = [
            (CounterMetricFamily, "pushes", "Push requests applied or held for a step",
             stats["pushes"]),
            (CounterMetricFamily, "received_bytes", "Gradient bytes received",
             stats["bytes_received"]),
            (CounterMetricFamily, "sent_bytes", "Value bytes sent in pulls and push replies",
             stats["bytes_sent"]),
            (CounterMetricFamily, "sync_steps", "Synchronous steps decided or committed here",
             stats["sync_steps"]),
            (CounterMetricFamily, "dropped_gradients",
             "Gradients dropped in synchronous training for coming from an older step",
             stats["dropped"]),
            (CounterMetricFamily, "nonfinite_gradients",
             "Gradients refused for holding NaN or Inf", stats["nonfinite"]),
            (GaugeMetricFamily, "variables", "Variables held here", stats["variables"]),
            (GaugeMetricFamily, "uptime_seconds", "Seconds since the server started",
             stats["uptime_s"]),
        ]
        if stats["global_step"] >= 0:
            simple.append((GaugeMetricFamily, "global_step", "The job's global step (shard 0)",
                           stats["global_step"]))
        for kind, name, text, value in simple:
            metric = family(kind, name, text)
            metric.add_metric([shard], value)
            yield metric

        workers = stats["workers"]
        live = set(store.members.live())
        for name, text, value in (
                ("live_workers", "Workers registered, not done and heard from lately",
                 sum(1 for w in workers if w[1] and not w[2] and w[0] in live)),
                ("workers_done", "Workers that reported done", sum(1 for w in workers if w[2])),
                ("expected_workers", "Workers the job has", store.num_workers)):
            metric = family(GaugeMetricFamily, name, text)
            metric.add_metric([shard], value)
            yield metric
        last_seen = family(GaugeMetricFamily, "worker_last_seen_seconds",
                           "Seconds since each worker was last heard from", ["worker"])
        local_step = family(GaugeMetricFamily, "worker_local_step",
                            "Each worker's last reported local step", ["worker"])
        for index, registered, _, step, _, seen, *_ in workers:
            if registered:
                last_seen.add_metric([shard, str(index)], seen)
                local_step.add_metric([shard, str(index)], step)
        yield last_seen
        yield local_step

        staleness = stats["staleness_histogram"]  # one count per staleness 0, 1, 2, ...
        histogram = family(HistogramMetricFamily, "staleness",
                           "Versions (or global steps) a gradient was late when applied")
        buckets = [(bucket_bound(b), sum(staleness[:b + 1])) for b in STALENESS_BOUNDS]
        histogram.add_metric([shard], buckets + [("+Inf", sum(staleness))],
                             sum_value=sum(k * c for k, c in enumerate(staleness)))
        yield histogram

        apply_counts, apply_seconds, checkpoints, checkpoint_seconds, last = store.timings()
        histogram = family(HistogramMetricFamily, "apply_seconds",
                           "Time to apply a push's (or a sync step's) gradients")
        histogram.add_metric([shard], cumulative(apply_counts, APPLY_BUCKETS_S),
                             sum_value=apply_seconds)
        yield histogram
        summary = family(SummaryMetricFamily, "checkpoint_seconds",
                         "Time to write this shard's checkpoint files")
        summary.add_metric([shard], count_value=checkpoints, sum_value=checkpoint_seconds)
        yield summary
        for name, text, value in (
                ("last_checkpoint_seconds", "Time the last checkpoint file took", last[0]),
                ("last_checkpoint_bytes", "Size of the last checkpoint file", last[1])):
            metric = family(GaugeMetricFamily, name, text)
            metric.add_metric([shard], value)
            yield metric
        if self.publisher is not None:
            yield from self._publishing(family, shard)

    def _publishing(self, family, shard):
        publisher = self.publisher
        published = dict(publisher.stats)
        for kind, name, text, value in (
                (GaugeMetricFamily, "followers", "Serving processes following this shard",
                 publisher.followers),
                (GaugeMetricFamily, "change_sequence",
                 "The sequence number of this shard's last table change",
                 publisher.clock.value),
                (CounterMetricFamily, "published_deltas", "Deltas published to followers",
                 published["deltas"]),
                (CounterMetricFamily, "published_bytes", "Bytes of the deltas published",
                 published["bytes"]),
                (CounterMetricFamily, "follower_snapshots", "Snapshots sent to followers",
                 published["snapshots"]),
                (CounterMetricFamily, "followers_dropped",
                 "Followers dropped for falling behind (they resync)", published["dropped"])):
            metric = family(kind, name, text)
            metric.add_metric([shard], value)
            yield metric
