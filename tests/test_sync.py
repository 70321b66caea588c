"""Synchronous and bounded-staleness training against real parameter servers (gRPC on
loopback, in this process), with worker threads each running its own graph and session."""

import threading
import time

import numpy as np
import pytest

import psflow as tf
from psflow.ps.shard_server import ParameterServer
from psflow.train.cluster import ClusterSpec, TaskConfig
from psflow.worker.distributed_session import DistributedSession
from oracles import assert_every_worker_matches, train_sync_oracle
from waiting import wait_for

BATCH = 8
FEATURES = 5


@pytest.fixture
def cluster(request):
    """cluster(num_ps, num_workers) -> the started servers (stopped after the test)."""
    started = []

    def start(num_ps, num_workers):
        for i in range(num_ps):
            server = ParameterServer(shard=i, num_workers=num_workers)
            server.start()
            started.append(server)
        return started

    yield start
    for server in started:
        server.stop(grace=0)


def task(servers, num_workers, index):
    spec = ClusterSpec({"ps": [f"127.0.0.1:{s.port}" for s in servers],
                        "worker": ["127.0.0.1:0"] * num_workers})
    return TaskConfig(spec, "worker", index)


def data(step, worker, seed=0):
    """The deterministic batch worker `worker` trains on at `step`."""
    rng = np.random.default_rng([seed, step, worker])
    return rng.normal(size=(BATCH, FEATURES)), rng.normal(size=BATCH)


def model(make_optimizer):
    """A float64 two-layer regression model; returns (x, y, loss, train_op, step, variables)."""
    x = tf.placeholder(tf.float64, shape=(None, FEATURES), name="x")
    y = tf.placeholder(tf.float64, shape=(None,), name="y")
    w1 = tf.Variable(np.linspace(-1, 1, FEATURES * 4).reshape(FEATURES, 4), name="w1")
    b1 = tf.Variable(np.zeros(4), name="b1")
    w2 = tf.Variable(np.linspace(1, -1, 4), name="w2")
    hidden = tf.tanh(x @ w1 + b1)
    loss = tf.reduce_mean(tf.square(tf.reduce_sum(hidden * w2, axis=1) - y))
    step = tf.train.get_or_create_global_step()
    train = make_optimizer().minimize(loss, global_step=step)
    return x, y, loss, train, step, [w1, b1, w2]


def train_locally(make_optimizer, num_workers, steps):
    """What sync training of `model` must give (the sync oracle)."""
    with tf.Graph().as_default():
        x, y, loss, train, step, variables = model(make_optimizer)
        return train_sync_oracle(train, (x, y), data, num_workers, steps, variables)


def in_threads(count, work):
    """Runs work(index) in one thread per index; returns {index: its result} and re-raises
    the first error a thread met."""
    results, errors = {}, []

    def run(index):
        try:
            results[index] = work(index)
        except BaseException as exc:  # reported by the test thread
            errors.append((index, exc))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    if errors:
        raise errors[0][1]
    return results


def run_workers(servers, num_workers, make_optimizer, budgets, on_step=None):
    """Trains one thread per worker, worker i for budgets[i] of its own steps; returns
    {worker: final values} and re-raises a worker's error."""

    def work(index):
        with tf.Graph().as_default() as graph:
            x, y, loss, train, step, variables = model(make_optimizer)
            session = DistributedSession(graph, task(servers, num_workers, index))
            try:
                for k in range(budgets[index]):
                    if on_step:
                        on_step(index, k)
                    global_step = int(session.run(step))
                    bx, by = data(global_step, index)
                    session.run(train, {x: bx, y: by})
                return session.run(variables)
            finally:
                session.close()

    return in_threads(num_workers, work)


OPTIMIZERS = {"sgd": lambda: tf.train.GradientDescentOptimizer(0.1),
              "adam": lambda: tf.train.AdamOptimizer(0.05)}


@pytest.mark.parametrize("num_ps", [1, 2])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_sync_equals_one_process_on_the_concatenated_batch(cluster, name, num_ps):
    steps, workers = 8, 2
    servers = cluster(num_ps, workers)
    opt = OPTIMIZERS[name]
    results = run_workers(servers, workers,
                          lambda: tf.train.SyncReplicasOptimizer(opt(), workers, workers),
                          [steps] * workers)
    expected = train_locally(opt, workers, steps)
    assert_every_worker_matches(results, expected)
    assert servers[0].store.global_step == steps
    assert servers[0].store.stats()["dropped"] == 0


def test_ssp_with_staleness_zero_equals_sync(cluster):
    steps, workers = 6, 2
    servers = cluster(2, workers)
    opt = OPTIMIZERS["adam"]
    results = run_workers(servers, workers,
                          lambda: tf.train.BoundedStalenessOptimizer(opt(), staleness=0),
                          [steps] * workers)
    expected = train_locally(opt, workers, steps)
    for got, want in zip(results[0], expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)


def test_backup_workers_steps_take_the_first_gradients_and_drop_the_rest(cluster):
    servers = cluster(2, 3)
    steps = 10
    run_workers(servers, 3, lambda: tf.train.SyncReplicasOptimizer(
        tf.train.GradientDescentOptimizer(0.05), replicas_to_aggregate=2,
        total_num_replicas=3), [steps] * 3)
    stats = servers[0].store.stats()
    decisions = servers[0].store.sync.decisions  # step -> the workers whose gradients it took
    assert sorted(decisions) == list(range(stats["global_step"]))
    # Two gradients per step (one at the end, once a single worker was left); every other
    # push came too late for its step and was dropped.
    sizes = [len(decisions[step]) for step in sorted(decisions)]
    assert set(sizes) <= {1, 2} and sizes == sorted(sizes, reverse=True), sizes
    assert sum(len(w) for w in decisions.values()) + stats["dropped"] == 3 * steps
    assert stats["dropped"] > 0 and stats["global_step"] >= steps


def test_workers_with_different_budgets_all_finish(cluster):
    servers = cluster(2, 3)
    budgets = [3, 7, 12]
    run_workers(servers, 3, lambda: tf.train.SyncReplicasOptimizer(
        tf.train.GradientDescentOptimizer(0.05)), budgets)
    # Steps with all three, then two, then the last one alone: none waited for a finished one.
    assert servers[0].store.global_step == max(budgets)
    assert servers[0].store.stats()["dropped"] == 0


@pytest.mark.cluster  # a concurrency or timing run
def test_ssp_keeps_the_fast_worker_within_the_bound(cluster):
    servers = cluster(1, 2)
    staleness, steps = 2, 12
    done = [0, 0]
    gaps = []

    def on_step(index, k):
        if index == 1:
            time.sleep(0.03)  # the slow worker
        else:
            gaps.append(k - done[1])
        if k:
            done[index] = k

    run_workers(servers, 2, lambda: tf.train.BoundedStalenessOptimizer(
        tf.train.GradientDescentOptimizer(0.05), staleness=staleness), [steps, steps],
        on_step=on_step)
    # Worker 0 starts its step k only when worker 1 has finished step k - staleness - 1.
    assert max(gaps) <= staleness + 1, gaps
    assert max(gaps) >= 1  # and it did run ahead


@pytest.mark.cluster
def test_a_worker_that_goes_silent_leaves_the_steps(cluster, monkeypatch):
    """A worker that stops pushing and beating (as a killed one does, with nobody to report
    it) is dropped from the membership after DEAD_AFTER_S; the others finish their steps."""
    from psflow.ps import membership
    monkeypatch.setattr(membership, "DEAD_AFTER_S", 1.0)
    servers = cluster(2, 3)
    silent = threading.Event()

    def on_step(index, k):
        if index == 2 and k == 3:
            silent.set()
            raise SystemExit  # leaves without reporting done; its heartbeat stops below

    original_close = DistributedSession.close

    def close(session):
        if session.store.worker == 2 and silent.is_set():
            session._stopping.set()  # no done, no more heartbeats: it is simply gone
            return
        original_close(session)

    monkeypatch.setattr(DistributedSession, "close", close)
    started = time.monotonic()
    with pytest.raises(SystemExit):
        run_workers(servers, 3, lambda: tf.train.SyncReplicasOptimizer(
            tf.train.GradientDescentOptimizer(0.05)), [10, 10, 10], on_step=on_step)
    assert time.monotonic() - started < 30
    # Steps 0-2 with three workers, then the two live ones went on alone to their step 9.
    assert servers[0].store.global_step == 10


@pytest.mark.cluster
def test_a_restarted_worker_rejoins_at_the_current_step(cluster, monkeypatch):
    from psflow.ps import membership
    monkeypatch.setattr(membership, "DEAD_AFTER_S", 1.0)
    servers = cluster(1, 2)
    make = lambda: tf.train.SyncReplicasOptimizer(tf.train.GradientDescentOptimizer(0.05))  # noqa: E731
    errors = []

    def worker(index, steps, leave_silently=False):
        try:
            with tf.Graph().as_default() as graph:
                x, y, loss, train, step, variables = model(make)
                session = DistributedSession(graph, task(servers, 2, index))
                for _ in range(steps):
                    bx, by = data(int(session.run(step)), index)
                    session.run(train, {x: bx, y: by})
                if leave_silently:
                    session._stopping.set()  # killed: no done, no heartbeat
                else:
                    session.close()
        except BaseException as exc:
            errors.append(exc)

    steady = threading.Thread(target=worker, args=(0, 30))
    steady.start()
    worker(1, 3, leave_silently=True)
    # Worker 0 goes on alone once worker 1 counts as dead.
    wait_for(lambda: 1 not in servers[0].store.members.live() and
             servers[0].store.global_step > 3, 20, "worker 1 to count as dead")
    at_rejoin = servers[0].store.global_step
    worker(1, 5)  # the restarted worker 1
    steady.join(60)
    assert not steady.is_alive() and not errors, errors
    assert at_rejoin > 3
    # It joined at the step it found and none of its gradients came too late.
    assert servers[0].store.stats()["dropped"] == 0


def sparse_model(make_optimizer):
    """A float64 model whose table is read only through lookups (rows pulled and pushed one
    by one); returns (ids, y, train_op, step, variables)."""
    ids = tf.placeholder(tf.int64, shape=(None, 2), name="ids")
    y = tf.placeholder(tf.float64, shape=(None,), name="y")
    table = tf.Variable(np.linspace(-1, 1, 40 * 3).reshape(40, 3), name="table")
    w = tf.Variable(np.linspace(1, -1, 3), name="w")
    hidden = tf.tanh(tf.reduce_sum(tf.gather(table, ids), axis=1))
    loss = tf.reduce_mean(tf.square(tf.reduce_sum(hidden * w, axis=1) - y))
    step = tf.train.get_or_create_global_step()
    return ids, y, make_optimizer().minimize(loss, global_step=step), step, [table, w]


def sparse_data(step, worker):
    rng = np.random.default_rng([7, step, worker])
    return rng.integers(0, 12, size=(BATCH, 2)), rng.normal(size=BATCH)  # ids repeat


@pytest.mark.parametrize("name", ["sgd", "adagrad"])
def test_sync_with_lookups_equals_one_process_on_the_concatenated_batch(cluster, name):
    steps, workers = 6, 2
    servers = cluster(2, workers)
    opt = {"sgd": lambda: tf.train.GradientDescentOptimizer(0.3),
           "adagrad": lambda: tf.train.AdagradOptimizer(0.3)}[name]
    with tf.Graph().as_default():
        ids, y, train, step, variables = sparse_model(opt)
        expected = train_sync_oracle(train, (ids, y), sparse_data, workers, steps, variables)
    def work(index):
        with tf.Graph().as_default() as graph:
            ids, y, train, step, variables = sparse_model(
                lambda: tf.train.SyncReplicasOptimizer(opt(), workers, workers))
            session = DistributedSession(graph, task(servers, workers, index),
                                         partition_bytes=400)
            assert len(session.store.placement.parts_of(variables[0])) > 1
            try:
                for _ in range(steps):
                    bi, by = sparse_data(int(session.run(step)), index)
                    session.run(train, {ids: bi, y: by})
                return session.run(variables)
            finally:
                session.close()

    results = in_threads(workers, work)
    assert sorted(results) == [0, 1]
    assert_every_worker_matches(results, expected)
    assert servers[0].store.global_step == steps


def keyed_model(make_optimizer):
    keys = tf.placeholder(tf.int64, shape=(None, 2), name="keys")
    y = tf.placeholder(tf.float64, shape=(None,), name="y")
    table = tf.get_embedding_variable("emb", 3, value_dtype=tf.float64,
                                      initializer=tf.random_normal_initializer(seed=3))
    w = tf.Variable(np.linspace(1, -1, 3), name="w")
    rows = tf.nn.embedding_lookup(table, keys)
    hidden = tf.tanh(tf.reduce_sum(rows, axis=1))
    loss = tf.reduce_mean(tf.square(tf.reduce_sum(hidden * w, axis=1) - y))
    step = tf.train.get_or_create_global_step()
    return keys, y, rows, make_optimizer().minimize(loss, global_step=step), step, w


def keyed_data(step, worker):
    ids, targets = sparse_data(step, worker)
    return ids * 1_000_000_007 - 5_000_000_000, targets  # keys far apart, some negative


def test_sync_with_a_table_equals_one_process_on_the_concatenated_batch(cluster):
    steps, workers = 5, 2
    servers = cluster(2, workers)
    probe = np.unique(np.concatenate([keyed_data(t, i)[0].reshape(-1) for t in range(steps)
                                      for i in range(workers)]))
    probe = np.stack([probe, probe], axis=1)
    opt = lambda: tf.train.AdagradOptimizer(0.3)  # noqa: E731
    with tf.Graph().as_default():
        keys, y, rows, train, step, w = keyed_model(opt)
        expected = train_sync_oracle(train, (keys, y), keyed_data, workers, steps, [rows, w],
                                     {keys: probe})
    def work(index):
        with tf.Graph().as_default() as graph:
            keys, y, rows, train, step, w = keyed_model(
                lambda: tf.train.SyncReplicasOptimizer(opt(), workers, workers))
            session = DistributedSession(graph, task(servers, workers, index))
            try:
                for _ in range(steps):
                    bk, by = keyed_data(int(session.run(step)), index)
                    session.run(train, {keys: bk, y: by})
                return session.run([rows, w], {keys: probe})
            finally:
                session.close()

    results = in_threads(workers, work)
    assert sorted(results) == [0, 1]
    assert_every_worker_matches(results, expected)
