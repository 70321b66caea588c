"""Prometheus metrics: a parameter server's and a worker's /metrics after known training,
scraped over HTTP and parsed with prometheus_client's own parser; and a whole `launch
--metrics` job scraped while it runs."""

import math
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import psflow as tf
from psflow import monitoring
from psflow.ps.shard_exporter import ShardCollector
from psflow.ps.shard_server import ParameterServer
from psflow.ps.shard_store import ShardStore
from psflow.train.cluster import ClusterSpec, TaskConfig
from psflow.worker.distributed_session import DistributedSession
from psflow.worker.step_times import batch_size
from psflow.worker.worker_exporter import WorkerCollector
from test_worker_session import linear_model

ROOT = Path(__file__).resolve().parent.parent


def scrape(port):
    """{(metric sample name, frozenset of labels): value} from http://127.0.0.1:port/metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples[(name, frozenset((k, str(v)) for k, v in labels.items()))]


@pytest.fixture
def fresh_graph():
    with tf.Graph().as_default() as graph:
        yield graph


@pytest.fixture
def servers(tmp_path):
    started = [ParameterServer(shard=i, num_workers=1, checkpoint_root=str(tmp_path))
               for i in range(2)]
    for server in started:
        server.start()
    yield started
    for server in started:
        server.stop(grace=0)


@pytest.mark.cluster  # a concurrency or timing run
def test_a_shard_and_a_worker_report_what_training_did(fresh_graph, servers, tmp_path):
    x, y, _, _, loss, _, train = linear_model()
    cluster = ClusterSpec({"ps": [f"127.0.0.1:{s.port}" for s in servers],
                           "worker": ["127.0.0.1:0"]})
    session = DistributedSession(fresh_graph, TaskConfig(cluster, "worker", 0))
    rng = np.random.default_rng(0)
    served = []
    try:
        for _ in range(20):
            last = session.run([train, loss], {x: rng.normal(size=(8, 3)).astype(np.float32),
                                               y: rng.normal(size=8).astype(np.float32)})[1]
        digest, _, size, _ = servers[0].store.save(str(tmp_path / "shard-0.npz"))
        collector = WorkerCollector()
        collector.session = session
        for collect in [ShardCollector(s.store, s.publisher) for s in servers] + [collector]:
            served.append(monitoring.serve(collect, 0))
        shards = [scrape(port) for _, port in served[:2]]
        worker = scrape(served[2][1])
    finally:
        for server, _ in served:
            server.shutdown()
        session.close()

    assert value(shards[0], "psflow_ps_global_step", shard=0) == 20
    assert value(shards[0], "psflow_ps_followers", shard=0) == 0  # the parameter stream's
    assert value(shards[0], "psflow_ps_published_deltas_total", shard=0) == 0
    assert ("psflow_ps_global_step", frozenset({("shard", "1")})) not in shards[1]
    received = {name: sum(s.get(("psflow_ps_gradients_received_total",
                                 frozenset({("shard", str(i)), ("variable", name)})), 0)
                          for i, s in enumerate(shards)) for name in ("w", "b")}
    assert received == {"w": 20, "b": 20}
    for i, samples in enumerate(shards):
        pushes = value(samples, "psflow_ps_pushes_total", shard=i)
        assert pushes == 20  # the global step's push goes to shard 0; each shard holds one
        assert value(samples, "psflow_ps_apply_seconds_count", shard=i) == pushes
        assert value(samples, "psflow_ps_staleness_count", shard=i) == pushes
        assert value(samples, "psflow_ps_staleness_bucket", shard=i, le="0.0") == pushes
        assert value(samples, "psflow_ps_expected_workers", shard=i) == 1
        assert value(samples, "psflow_ps_received_bytes_total", shard=i) > 0
    rows = {name: (value(s, "psflow_ps_variable_rows", shard=i, variable=name),
                   value(s, "psflow_ps_variable_bytes", shard=i, variable=name))
            for i, s in enumerate(shards) for name in ("w", "b")
            if ("psflow_ps_variable_rows",
                frozenset({("shard", str(i)), ("variable", name)})) in s}
    assert rows == {"w": (3, 12), "b": (1, 4)}
    assert value(shards[0], "psflow_ps_checkpoint_seconds_count", shard=0) == 1
    assert value(shards[0], "psflow_ps_last_checkpoint_bytes", shard=0) == size
    assert value(shards[0], "process_resident_memory_bytes") > 0

    assert value(worker, "psflow_worker_runs_total", worker=0) == 20
    assert value(worker, "psflow_worker_examples_total", worker=0) == 160
    assert value(worker, "psflow_worker_local_step", worker=0) == 20
    assert value(worker, "psflow_worker_loss", worker=0) == pytest.approx(float(last))
    phases = {phase: value(worker, "psflow_worker_step_phase_seconds_total", worker=0,
                           phase=phase) for phase in ("pull", "compute", "push")}
    assert all(seconds > 0 for seconds in phases.values()), phases
    assert value(worker, "psflow_worker_step_seconds_count", worker=0) == 20
    assert value(worker, "psflow_worker_step_seconds_sum", worker=0) == \
        pytest.approx(sum(phases.values()))


def test_a_tables_rows_and_counters_are_metrics():
    store = ShardStore(shard=1)
    store.declare_tables([{"name": "ids", "dim": 4, "dtype": "float32",
                           "initializer": {"kind": "zeros"}, "filter_freq": 2,
                           "steps_to_live": 0}])
    keys = np.array([5, 7, 9], np.int64)
    store.lookup_keys([("ids", keys, None, True)])  # seen once: filtered
    store.lookup_keys([("ids", keys[:2], None, True)])  # 5 and 7 seen twice: created
    server, port = monitoring.serve(ShardCollector(store), 0)
    try:
        samples = scrape(port)
    finally:
        server.shutdown()
    assert value(samples, "psflow_ps_table_rows_created_total", shard=1, table="ids") == 2
    assert value(samples, "psflow_ps_table_rows_filtered_total", shard=1, table="ids") == 3
    assert value(samples, "psflow_ps_variable_rows", shard=1, variable="ids") == 2
    assert value(samples, "psflow_ps_pulls_total", shard=1, variable="ids") == 2


def test_batch_size_is_the_leading_dimension_of_the_first_fed_batch():
    assert batch_size({"lr": np.float32(0.1), "x": np.zeros((32, 4))}) == 32
    assert batch_size({"ids": [3, 4, 5]}) == 3
    assert batch_size({"lr": 0.5}) == 0


def test_a_bad_metrics_port_is_named():
    with pytest.raises(ValueError, match="PSFLOW_METRICS_PORT must be a port number, got 'http'"):
        monitoring.port_from_env({"PSFLOW_METRICS_PORT": "http"})
    assert monitoring.port_from_env({"PSFLOW_METRICS_PORT": " "}) is None
    result = subprocess.run([sys.executable, "-m", "psflow.ps", "--task-index", "0",
                             "--num-workers", "1", "--metrics-port", "70000"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--metrics-port" in result.stderr


@pytest.mark.cluster
def test_a_taken_metrics_port_is_replaced_by_a_free_one(caplog):
    store = ShardStore()
    first, port = monitoring.serve(ShardCollector(store), 0)
    try:
        second, other = monitoring.serve(ShardCollector(store), port)
        second.shutdown()
    finally:
        first.shutdown()
    assert other != port
    assert f"port {port} on 127.0.0.1 is taken; serving on port {other}" in caplog.text


@pytest.mark.cluster
def test_a_launch_job_serves_metrics_from_every_process(tmp_path):
    release = tmp_path / "scraped"
    process = subprocess.Popen(
        [sys.executable, "-m", "psflow.launcher", "--no-progress", "--metrics", "--workers", "2",
         "--ps", "1", str(ROOT / "tests" / "cluster_scripts" / "watched.py"), str(release)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        line = process.stdout.readline()
        ports = dict(re.findall(r"(\w+:\d) http://127\.0\.0\.1:(\d+)/metrics", line))
        assert set(ports) == {"ps:0", "worker:0", "worker:1"}, line
        deadline = time.monotonic() + 90
        while True:
            try:
                ps = scrape(ports["ps:0"])
                if value(ps, "psflow_ps_global_step", shard=0) >= 60:
                    workers = [scrape(ports[f"worker:{i}"]) for i in range(2)]
                    if all(value(s, "psflow_worker_runs_total", worker=i) >= 30
                           for i, s in enumerate(workers)):
                        break
            except (OSError, KeyError):
                pass
            assert time.monotonic() < deadline, "the job's metrics never showed 60 steps"
            time.sleep(0.2)
    finally:
        release.touch()
        output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    assert value(ps, "psflow_ps_global_step", shard=0) == 60
    assert value(ps, "psflow_ps_gradients_received_total", shard=0, variable="w") == 60
    assert value(ps, "psflow_ps_live_workers", shard=0) == 2
    for i, samples in enumerate(workers):
        assert value(samples, "psflow_worker_runs_total", worker=i) == 30
        assert value(samples, "psflow_worker_examples_total", worker=i) == 30 * 16
        assert math.isfinite(value(samples, "psflow_worker_loss", worker=i))
