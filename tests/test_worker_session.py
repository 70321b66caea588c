"""The distributed session against real parameter servers in this process (gRPC on loopback):
what a step pulls and pushes, and that training through it equals training locally."""

import grpc
import numpy as np
import pytest

import psflow as tf
from psflow.ps.shard_server import ParameterServer
from psflow.train.cluster import ClusterSpec, TaskConfig
from psflow.worker.client import ShardClient
from psflow.worker.distributed_session import DistributedSession


@pytest.fixture(autouse=True)
def fresh_graph():
    with tf.Graph().as_default() as graph:
        yield graph


@pytest.fixture
def servers():
    started = [ParameterServer(shard=i, num_workers=1) for i in range(2)]
    for server in started:
        server.start()
    yield started
    for server in started:
        server.stop(grace=0)


@pytest.fixture
def calls(monkeypatch):
    """Every RPC method the workers' clients call, in order."""
    made = []
    original = ShardClient.call

    def counted(self, method, request, *args, **kwargs):
        made.append(method)
        return original(self, method, request, *args, **kwargs)

    monkeypatch.setattr(ShardClient, "call", counted)
    return made


def task(servers):
    cluster = ClusterSpec({"ps": [f"127.0.0.1:{s.port}" for s in servers],
                           "worker": ["127.0.0.1:0"]})
    return TaskConfig(cluster, "worker", 0)


def linear_model(learning_rate=0.1):
    x = tf.placeholder(tf.float32, shape=(None, 3), name="x")
    y = tf.placeholder(tf.float32, shape=(None,), name="y")
    w = tf.Variable(np.array([0.5, -1.0, 2.0], np.float32), name="w")
    b = tf.Variable(np.float32(0.25), name="b")
    loss = tf.reduce_mean(tf.square(tf.reduce_sum(x * w, axis=1) + b - y))
    step = tf.train.get_or_create_global_step()
    train = tf.train.GradientDescentOptimizer(learning_rate).minimize(loss, global_step=step)
    return x, y, w, b, loss, step, train


def batches(count, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(8, 3)).astype(np.float32), rng.normal(size=8).astype(np.float32))
            for _ in range(count)]


def test_training_through_the_servers_equals_training_locally(fresh_graph, servers, calls):
    x, y, w, b, loss, step, train = linear_model()
    data = batches(20)
    with tf.Session() as local:
        local.run(tf.global_variables_initializer())
        expected = [local.run([train, loss], {x: bx, y: by})[1] for bx, by in data]
        expected_w, expected_b = local.run([w, b])
    session = DistributedSession(fresh_graph, task(servers))
    try:
        losses = [session.run([train, loss], {x: bx, y: by})[1] for bx, by in data]
        np.testing.assert_allclose(losses, expected, rtol=1e-6)
        got_w, got_b, got_step = session.run([w, b, step])
    finally:
        session.close()
    np.testing.assert_allclose(got_w, expected_w, rtol=1e-6)
    np.testing.assert_allclose(got_b, expected_b, rtol=1e-6)
    assert got_step == 20


def test_training_runs_take_their_values_from_the_last_push_reply(fresh_graph, servers, calls):
    x, y, w, b, loss, step, train = linear_model()
    session = DistributedSession(fresh_graph, task(servers))
    try:
        data = batches(5)
        del calls[:]
        for bx, by in data:
            session.run(train, {x: bx, y: by})
        # One pull per shard for the first step; after that each push brings the values back.
        assert calls.count("Pull") == 2 and calls.count("Push") == 2 * 5
        # A run that does not train pulls, so it sees every other worker's updates.
        del calls[:]
        session.run(w)
        assert calls == ["Pull"]
    finally:
        session.close()


def test_an_assigned_value_is_pulled_not_taken_from_the_last_push(fresh_graph, servers):
    x, y, w, b, loss, step, train = linear_model(learning_rate=0.0)
    session = DistributedSession(fresh_graph, task(servers))
    try:
        bx, by = batches(1)[0]
        session.run(train, {x: bx, y: by})
        session.run(w.assign(np.zeros(3, np.float32)))
        _, got = session.run([train, w], {x: bx, y: by})
    finally:
        session.close()
    np.testing.assert_array_equal(got, np.zeros(3))


@pytest.mark.cluster  # a job's load, not a job: 600 MB through two shards takes 10-15 s
def test_a_600mb_variable_trains_through_two_shards(fresh_graph, servers, calls):
    rows, cols = 150 * 1024, 1024  # 600 MiB of float32: split into parts of at most 256 MiB
    w = tf.Variable(tf.zeros((rows, cols)), name="big")
    step = tf.train.get_or_create_global_step()
    loss = tf.reduce_sum(w)
    train = tf.train.GradientDescentOptimizer(0.5).minimize(loss, global_step=step)
    session = DistributedSession(fresh_graph, task(servers))
    try:
        parts = session.store.placement.parts_of(w)
        assert len(parts) == 3 and {p.shard for p in parts} == {0, 1}
        assert max(p.nbytes for p in parts) <= 256 * 1024 * 1024
        session.run(train)
        value = session.run(w)
    finally:
        session.close()
    assert value.shape == (rows, cols)
    assert value[0, 0] == -0.5 and value[-1, -1] == -0.5 and (value == -0.5).all()
    # The initial value and the gradient each travelled once, in requests within the limits.
    assert sum(s.store.stats()["bytes_received"] for s in servers) == 2 * rows * cols * 4


@pytest.mark.parametrize("mode,shard", [("async", 1), ("async", 0), ("sync", 0), ("sync", 1)])
def test_a_push_whose_reply_is_cut_is_applied_once(fresh_graph, monkeypatch, mode, shard):
    """A shard applies a push and its reply never arrives: the worker's step runs again with
    the same push id, and no shard applies that step's gradients twice, so training still
    equals training locally."""
    from psflow.ps.servicer import ParameterServerServicer
    original = ParameterServerServicer.Push
    cut = {"left": 1, "pushes": 0}

    def push_then_cut(self, request, context):
        reply = original(self, request, context)
        if self.store.shard == shard:
            cut["pushes"] += 1
            if cut["pushes"] == 4 and cut["left"]:
                cut["left"] -= 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "the reply was lost")
        return reply

    monkeypatch.setattr(ParameterServerServicer, "Push", push_then_cut)
    monkeypatch.setenv("PSFLOW_MODE", mode)
    started = [ParameterServer(shard=i, num_workers=1).start() for i in range(2)]
    try:
        x, y, w, b, loss, step, train = linear_model()
        data = batches(8)
        with tf.Session() as local:
            local.run(tf.global_variables_initializer())
            for bx, by in data:
                local.run(train, {x: bx, y: by})
            expected_w, expected_b = local.run([w, b])
        session = DistributedSession(fresh_graph, task(started))
        assert {p.shard for v in (w, b) for p in session.store.placement.parts_of(v)} == {0, 1}
        try:
            for bx, by in data:
                session.run(train, {x: bx, y: by})
            got_w, got_b, got_step = session.run([w, b, step])
        finally:
            session.close()
    finally:
        for server in started:
            server.stop(grace=0)
    assert cut["left"] == 0, "no reply was cut"
    np.testing.assert_allclose(got_w, expected_w, rtol=1e-6)
    np.testing.assert_allclose(got_b, expected_b, rtol=1e-6)
    assert got_step == len(data)


def test_the_chief_initializes_with_a_scaffold_init_op(fresh_graph, servers):
    x, y, w, b, loss, step, train = linear_model()
    start = tf.placeholder(tf.float32, (3,), name="start")
    init = w.assign(start)
    session = DistributedSession(fresh_graph, task(servers),
                                 initializer=(init, {start: [3.0, 2.0, 1.0]}))
    try:
        assert session.initialized_here
        np.testing.assert_array_equal(session.run(w), [3.0, 2.0, 1.0])
        assert float(session.run(b)) == 0.25
    finally:
        session.close()


@pytest.mark.cluster
def test_a_farewell_to_a_frozen_parameter_server_does_not_fail_the_worker(fresh_graph, tmp_path,
                                                                         monkeypatch, caplog):
    """A shard that does not answer WorkerDone (here: stopped with SIGSTOP) is named in a
    warning; the worker finished its work, so it finishes."""
    import logging
    import signal
    import subprocess
    import sys
    import time

    from psflow.worker import distributed_store as worker_store
    monkeypatch.setattr(worker_store, "FAREWELL_TIMEOUT_S", 1.0)
    port_file = tmp_path / "port"
    frozen = subprocess.Popen([sys.executable, "-m", "psflow.ps", "--task-index", "1",
                               "--num-workers", "1", "--port-file", str(port_file)],
                              stderr=subprocess.DEVNULL)
    live = ParameterServer(shard=0, num_workers=1).start()
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert frozen.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        cluster = ClusterSpec({"ps": [f"127.0.0.1:{live.port}",
                                      f"127.0.0.1:{int(port_file.read_text())}"],
                               "worker": ["127.0.0.1:0"]})
        x, y, w, b, loss, step, train = linear_model()
        session = DistributedSession(fresh_graph, TaskConfig(cluster, "worker", 0))
        for bx, by in batches(3):
            session.run(train, {x: bx, y: by})
        frozen.send_signal(signal.SIGSTOP)
        with caplog.at_level(logging.WARNING):
            session.close()  # no exception
        assert "parameter server 1 did not take this worker's farewell" in caplog.text
        assert live.store.all_done.is_set()
    finally:
        frozen.send_signal(signal.SIGCONT)
        frozen.kill()
        frozen.wait()
        live.stop(grace=0)


def test_a_chief_whose_final_save_fails_does_not_report_done(fresh_graph, tmp_path,
                                                              monkeypatch):
    import errno

    from psflow import checkpoint
    from psflow.errors import ResourceExhaustedError
    from psflow.train import monitored_session

    server = ParameterServer(shard=0, num_workers=1, checkpoint_root=tmp_path).start()
    try:
        x, y, w, b, loss, step, train = linear_model()
        monkeypatch.setattr(monitored_session, "task_config_from_env",
                            lambda: task([server]))
        session = tf.train.MonitoredTrainingSession(checkpoint_dir=str(tmp_path),
                                                    save_checkpoint_steps=1000)
        for bx, by in batches(2):
            session.run(train, {x: bx, y: by})

        def full(path, *args):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(checkpoint, "write_shard", full)
        with pytest.raises(ResourceExhaustedError, match="No space left on device"):
            session.close()
        assert not server.store.all_done.is_set()
        rows = {row[0]: row for row in server.store.stats()["workers"]}
        assert rows[0][2] is False  # not done
    finally:
        server.stop(grace=0)


def test_a_checkpoint_dir_outside_the_servers_root_is_refused_at_the_start(fresh_graph,
                                                                           tmp_path, servers):
    from psflow.errors import FailedPreconditionError
    linear_model()
    with pytest.raises(FailedPreconditionError, match="has no checkpoint root"):
        DistributedSession(fresh_graph, task(servers), checkpoint_dir=str(tmp_path))


def embedding_model(rows=4000, dim=8, learning_rate=0.5, optimizer=None):
    ids = tf.placeholder(tf.int64, shape=(None, 3), name="ids")
    y = tf.placeholder(tf.float32, shape=(None,), name="y")
    rng = np.random.default_rng(1)
    table = tf.Variable(rng.normal(size=(rows, dim)).astype(np.float32) * 0.1, name="table")
    w = tf.Variable(np.ones(dim, np.float32), name="w")
    looked_up = tf.reduce_sum(tf.gather(table, ids), axis=1)  # (batch, dim)
    loss = tf.reduce_mean(tf.square(tf.reduce_sum(looked_up * w, axis=1) - y))
    step = tf.train.get_or_create_global_step()
    opt = optimizer or tf.train.GradientDescentOptimizer(learning_rate)
    return ids, y, table, w, loss, step, opt.minimize(loss, global_step=step)


def id_batches(count, rows=4000, seed=0):
    rng = np.random.default_rng(seed)
    # Repeated ids within a batch, as real click logs have.
    return [(rng.integers(0, rows, size=(16, 3)) % rng.integers(50, rows),
             rng.normal(size=16).astype(np.float32)) for _ in range(count)]


@pytest.mark.parametrize("name", ["sgd", "adagrad", "ftrl"])
def test_a_table_read_only_by_lookups_is_pulled_row_by_row_and_trains_as_locally(
        fresh_graph, name, calls):
    make = {"sgd": lambda: tf.train.GradientDescentOptimizer(0.5),
            "adagrad": lambda: tf.train.AdagradOptimizer(0.5),
            "ftrl": lambda: tf.train.FtrlOptimizer(0.5, l1_regularization_strength=0.001,
                                                   l2_regularization_strength=0.01)}[name]
    ids, y, table, w, loss, step, train = embedding_model(optimizer=make())
    data = id_batches(12)
    with tf.Session() as local:
        local.run(tf.global_variables_initializer())
        expected = [local.run([train, loss], {ids: i, y: t})[1] for i, t in data]
        expected_table, expected_w = local.run([table, w])
    started = [ParameterServer(shard=i, num_workers=1).start() for i in range(2)]
    try:
        cluster = ClusterSpec({"ps": [f"127.0.0.1:{s.port}" for s in started],
                               "worker": ["127.0.0.1:0"]})
        # Parts of 40 KB: the 128 KB table spreads over both shards.
        session = DistributedSession(fresh_graph, TaskConfig(cluster, "worker", 0),
                                     partition_bytes=40_000)
        assert {p.shard for p in session.store.placement.parts_of(table)} == {0, 1}
        sent_before = sum(s.store.stats()["bytes_sent"] for s in started)
        losses = [session.run([train, loss], {ids: i, y: t})[1] for i, t in data]
        sent = sum(s.store.stats()["bytes_sent"] for s in started) - sent_before
        got_table, got_w = session.run([table, w])
        session.close()
    finally:
        for server in started:
            server.stop(grace=0)
    np.testing.assert_allclose(losses, expected, rtol=1e-5)
    np.testing.assert_allclose(got_table, expected_table, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got_w, expected_w, rtol=1e-5)
    # 12 steps of at most 48 distinct rows of 32 bytes (and w), never the 128 KB table.
    assert sent < 12 * (48 * 32 + 64) + 1024, sent
    assert "PullRows" in calls


def test_an_id_out_of_range_names_the_table_the_id_and_its_rows(fresh_graph, servers):
    from psflow.errors import InvalidArgumentError
    ids, y, table, w, loss, step, train = embedding_model(rows=100)
    session = DistributedSession(fresh_graph, task(servers))
    try:
        with pytest.raises(InvalidArgumentError, match="'table'.*id 100 is out of range; the "
                                                       "table has 100 rows"):
            session.run(train, {ids: [[1, 2, 100]], y: [0.0]})
        session.run(train, {ids: [[1, 2, 99]], y: [0.0]})  # and the job goes on
    finally:
        session.close()
    with tf.Session() as local:
        local.run(tf.global_variables_initializer())
        with pytest.raises(InvalidArgumentError, match="id -1 is out of range"):
            local.run(loss, {ids: [[-1, 0, 0]], y: [0.0]})


def test_the_servers_refuse_rows_out_of_range(servers):
    from psflow.errors import InvalidArgumentError
    from psflow.proto import codec
    from psflow.proto import psflow_pb2 as pb
    client = ShardClient(0, f"127.0.0.1:{servers[0].port}")
    client.call("DeclareVariables", pb.DeclareVariablesRequest(variables=[
        pb.VariableSpec(name="t", dtype="float32", shape=[10, 2])]))
    request = pb.InitializeVariablesRequest()
    codec.encode(np.arange(20, dtype=np.float32).reshape(10, 2),
                 request.values.add(name="t").tensor)
    client.call("InitializeVariables", request)
    rows = pb.PullRowsRequest()
    codec.encode(np.array([3, 10], np.int64), rows.selections.add(name="t").rows)
    with pytest.raises(InvalidArgumentError, match="row 10 of variable 't' is out of range: it "
                                                   "has 10 rows"):
        client.call("PullRows", rows)
    rows = pb.PullRowsRequest()
    codec.encode(np.array([3, 7], np.int64), rows.selections.add(name="t").rows)
    reply = client.call("PullRows", rows)
    np.testing.assert_array_equal(reply.values[0].array, [[6, 7], [14, 15]])
    client.close()


def test_hand_sharded_and_partitioned_tables_train_as_locally(fresh_graph, servers, calls):
    ids = tf.placeholder(tf.int64, shape=(None, 2), name="ids")
    y = tf.placeholder(tf.float32, shape=(None,), name="y")
    rng = np.random.default_rng(3)
    shards = [tf.Variable(rng.normal(size=(20, 4)).astype(np.float32), name=f"emb/part{k}")
              for k in range(3)]
    wide = tf.get_variable("wide", shape=(60, 1), initializer=tf.zeros_initializer(),
                           partitioner=tf.fixed_size_partitioner(4))
    deep = tf.reduce_sum(tf.nn.embedding_lookup(shards, ids, partition_strategy="div"), axis=1)
    logit = tf.reduce_sum(deep, axis=1) + tf.reduce_sum(tf.nn.embedding_lookup(wide, ids),
                                                        axis=[1, 2])
    loss = tf.reduce_mean(tf.square(logit - y))
    step = tf.train.get_or_create_global_step()
    train = tf.train.AdagradOptimizer(0.3).minimize(loss, global_step=step)
    data = [(rng.integers(0, 60, size=(8, 2)), rng.normal(size=8).astype(np.float32))
            for _ in range(6)]
    with tf.Session() as local:
        local.run(tf.global_variables_initializer())
        for i, t in data:
            local.run(train, {ids: i, y: t})
        expected = local.run(shards + [wide])
    session = DistributedSession(fresh_graph, task(servers))
    try:
        assert len(session.store.placement.parts_of(wide)) == 4  # the partitioner's count
        for i, t in data:
            session.run(train, {ids: i, y: t})
        got = session.run(shards + [wide])
    finally:
        session.close()
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-7)
    assert "PullRows" in calls


def test_multi_hot_features_train_as_locally_row_by_row(fresh_graph, servers, calls):
    sp_ids = tf.sparse_placeholder(tf.int64, name="ids")
    y = tf.placeholder(tf.float32, shape=(None,), name="y")
    table = tf.Variable(np.random.default_rng(4).normal(size=(50, 4)).astype(np.float32),
                        name="table")
    pooled = tf.nn.embedding_lookup_sparse(table, sp_ids, None, combiner="sqrtn")
    loss = tf.reduce_mean(tf.square(tf.reduce_sum(pooled, axis=1) - y))
    step = tf.train.get_or_create_global_step()
    train = tf.train.AdagradOptimizer(0.2).minimize(loss, global_step=step)
    rng = np.random.default_rng(5)
    data = []
    for _ in range(5):
        counts = rng.integers(1, 4, size=6)
        indices = np.array([[r, k] for r, c in enumerate(counts) for k in range(c)])
        data.append((tf.SparseTensorValue(indices, rng.integers(0, 50, size=len(indices)),
                                          [6, 3]), rng.normal(size=6).astype(np.float32)))
    with tf.Session() as local:
        local.run(tf.global_variables_initializer())
        for ids, t in data:
            local.run(train, {sp_ids: ids, y: t})
        expected = local.run(table)
    session = DistributedSession(fresh_graph, task(servers))
    try:
        for ids, t in data:
            session.run(train, {sp_ids: ids, y: t})
        got = session.run(table)
    finally:
        session.close()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert "PullRows" in calls


def test_metric_counts_stay_in_the_worker(fresh_graph, servers):
    x, y, w, b, loss, step, train = linear_model()
    labels = tf.placeholder(tf.int64, shape=(None,), name="labels")
    value, update = tf.metrics.auc(labels, tf.sigmoid(tf.reduce_sum(x * w, axis=1) + b))
    session = DistributedSession(fresh_graph, task(servers))
    try:
        session.run(tf.local_variables_initializer())
        features = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], np.float32)
        # scores: w . x + b = 0.75, -0.75, 2.25, -0.25 -> ranking 2, 0, 3, 1
        got = session.run(update, {x: features, labels: [1, 0, 1, 0]})
        declared = {name for server in servers for name in server.store.variables.held}
    finally:
        session.close()
    assert got == pytest.approx(1.0, abs=1e-3)
    assert declared and not any("confusion" in name for name in declared)


def test_an_embedding_table_trains_through_the_servers_as_locally(fresh_graph, servers, calls):
    keys = tf.placeholder(tf.int64, shape=(None, 2), name="keys")
    y = tf.placeholder(tf.float32, shape=(None,), name="y")
    table = tf.get_embedding_variable("emb", embedding_dim=4)
    w = tf.Variable(np.ones(4, np.float32), name="w")
    rows = tf.nn.embedding_lookup(table, keys)
    loss = tf.reduce_mean(tf.square(tf.reduce_sum(rows * w, axis=[1, 2]) - y))
    step = tf.train.get_or_create_global_step()
    train = tf.train.AdagradOptimizer(0.3).minimize(loss, global_step=step)
    rng = np.random.default_rng(7)
    data = [(rng.integers(-2**62, 2**62, size=(5, 2)) // rng.integers(1, 10**15, size=(5, 2)),
             rng.normal(size=5).astype(np.float32)) for _ in range(6)]
    probe = np.unique(np.concatenate([k.reshape(-1) for k, _ in data]))
    probe_feed = np.stack([probe, probe], axis=1)
    with tf.Session() as local:
        local.run(tf.global_variables_initializer())
        for k, t in data:
            local.run(train, {keys: k, y: t})
        expected = local.run(rows, {keys: probe_feed})
        expected_w = local.run(w)
    session = DistributedSession(fresh_graph, task(servers))
    try:
        for k, t in data:
            session.run(train, {keys: k, y: t})
        got = session.run(rows, {keys: probe_feed})
        got_w = session.run(w)
        unknown = session.run(rows, {keys: [[123456789, 987654321]]})
    finally:
        session.close()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_w, expected_w, rtol=1e-5)
    assert not unknown.any()  # an unseen key reads zeros, and reading created no row
    held = [len(s.store.tables.held["emb"].table) for s in servers]
    assert sum(held) == probe.size and min(held) > 0  # spread over both shards by hash


def test_the_servers_name_bad_table_requests_and_keep_serving(servers):
    from psflow.errors import InvalidArgumentError, NotFoundError
    from psflow.proto import codec, wire
    from psflow.proto import psflow_pb2 as pb
    client = ShardClient(0, f"127.0.0.1:{servers[0].port}")
    spec = pb.TableSpec(name="user", dim=4, dtype="float32", initializer="zeros")
    client.call("DeclareVariables", pb.DeclareVariablesRequest(tables=[spec]))
    with pytest.raises(InvalidArgumentError, match="'user' is already declared as dim 4.*dim 8"):
        client.call("DeclareVariables", pb.DeclareVariablesRequest(tables=[pb.TableSpec(
            name="user", dim=8, dtype="float32", initializer="zeros")]))

    def lookup(name, keys, train=True):
        request = pb.PullRowsRequest()
        codec.encode(np.asarray(keys), request.keys.add(name=name, train=train).keys)
        return client.call("PullRows", request)

    with pytest.raises(NotFoundError, match="no embedding table 'item'"):
        lookup("item", np.array([1], np.int64))
    with pytest.raises(InvalidArgumentError, match="keys of table 'user'.*float32"):
        lookup("user", np.array([1.5], np.float32))
    push = wire.PushBuilder(worker=0)
    push.rule.name = "sgd"
    push.rule.hyper["learning_rate"] = 1.0
    push.add_gradient("user", 0, np.ones((2, 3), np.float32), np.array([1, 2], np.int64),
                      keyed=True)
    with pytest.raises(InvalidArgumentError, match="table 'user'.*\\(2, 3\\).*\\(2, 4\\)"):
        client.call("Push", push)
    # and it serves on: a row per key, created by the training lookup, then trained
    assert lookup("user", np.array([5, -9], np.int64)).values[0].array.shape == (2, 4)
    push = wire.PushBuilder(worker=0)
    push.rule.name = "sgd"
    push.rule.hyper["learning_rate"] = 1.0
    push.add_gradient("user", 0, np.ones((2, 4), np.float32), np.array([-9, 77], np.int64),
                      keyed=True)
    client.call("Push", push)
    rows = lookup("user", np.array([-9, 5, 77], np.int64), train=False).values[0].array
    np.testing.assert_array_equal(rows, [[-1] * 4, [0] * 4, [0] * 4])
    stats = client.call("GetStats", pb.StatsRequest())
    table = {t.name: t for t in stats.tables}["user"]
    assert (table.rows, table.created, table.dropped_gradients) == (2, 2, 1)
    client.close()


def test_a_classic_global_step_advances_on_the_cluster(fresh_graph, servers):
    x = tf.placeholder("float", shape=(None, 3), name="x")
    y = tf.placeholder("float", shape=(None,), name="y")
    w = tf.Variable(np.zeros(3, np.float32), name="w")
    loss = tf.reduce_mean(tf.square(tf.reduce_sum(x * w, axis=1) - y))
    global_step = tf.Variable(0, name="global_step", trainable=False)
    train = tf.train.GradientDescentOptimizer(0.1).minimize(loss, global_step=global_step)
    session = DistributedSession(fresh_graph, task(servers))
    try:
        session.run(tf.global_variables_initializer())  # as TF1 scripts do; the step stays
        runs = 0
        while session.run(global_step) < 5 and runs < 50:  # TF1's loop condition
            session.run(train, {x: np.ones((2, 3), np.float32), y: [1.0, 1.0]})
            runs += 1
        assert runs == 5 and session.run(global_step) == 5
    finally:
        session.close()
    assert servers[0].store.global_step == 5


def test_a_decaying_learning_rate_trains_through_the_servers_as_locally(fresh_graph, servers):
    x, y, w, b, loss, step, _ = linear_model()
    rate = tf.train.exponential_decay(0.2, step, 1, 0.7)
    train = tf.train.AdamOptimizer(rate).minimize(loss, global_step=step)
    feeds = {x: np.array([[1, 2, 3], [0, 1, 0]], np.float32), y: [1.0, -1.0]}
    with tf.Session() as local:
        local.run(tf.global_variables_initializer())
        for _ in range(4):
            local.run(train, feeds)
        expected = local.run([w, b])
    session = DistributedSession(fresh_graph, task(servers))
    try:
        for _ in range(4):
            session.run(train, feeds)
        got = session.run([w, b])
    finally:
        session.close()
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5)


def test_lookups_of_ids_computed_from_feeds_are_pulled_before_the_run(fresh_graph, servers,
                                                                      calls):
    words = tf.placeholder(tf.string, shape=(None, 3), name="words")
    y = tf.placeholder(tf.float32, shape=(None,), name="y")
    tables = [tf.Variable(np.random.default_rng(k).normal(size=(500, 4)).astype(np.float32),
                          name=f"table{k}") for k in range(2)]
    ids = [tf.string_to_hash_bucket_fast(words, 500), tf.string_to_hash_bucket_fast(words, 499)]
    summed = sum(tf.reduce_sum(tf.reduce_sum(tf.gather(t, i), axis=1), axis=1)
                 for t, i in zip(tables, ids, strict=True))
    loss = tf.reduce_mean(tf.square(summed - y))
    train = tf.train.GradientDescentOptimizer(0.1).minimize(loss)
    rng = np.random.default_rng(3)
    data = [(rng.integers(0, 50, size=(8, 3)).astype(str), rng.normal(size=8).astype(np.float32))
            for _ in range(4)]
    with tf.Session() as local:
        local.run(tf.global_variables_initializer())
        expected = [local.run([train, loss], {words: w, y: t})[1] for w, t in data]
    session = DistributedSession(fresh_graph, task(servers), partition_bytes=4_000)
    losses = []
    for w, t in data:
        del calls[:]
        losses.append(session.run([train, loss], {words: w, y: t})[1])
        # Both tables' rows in one PullRows per shard, none during the run.
        assert calls.count("PullRows") <= len(servers), calls
    session.close()
    np.testing.assert_allclose(losses, expected, rtol=1e-5)
