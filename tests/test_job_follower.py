"""A job follower (serving.param_follower.JobFollower) over several parameter servers: each
key read from the shard that owns it, variables' parts put together, dense-update callbacks,
and a capped table trained by a distributed session read back as the session reads it."""

import time

import numpy as np

import psflow as tf
from psflow.key_index import shard_of_keys
from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb
from psflow.ps.shard_server import ParameterServer
from psflow.serving.param_follower import JobFollower
from psflow.train.cluster import ClusterSpec, TaskConfig
from psflow.worker.distributed_session import DistributedSession
from test_param_stream import TIMEOUT, connect


def test_a_job_follower_reads_keys_and_parts_from_the_shards_that_own_them(tmp_path):
    servers = [ParameterServer(shard=k, port=0, publish_period=0.02, dense_period=0.05).start()
               for k in range(2)]
    addresses = [f"127.0.0.1:{s.port}" for s in servers]
    stubs = [connect(a) for a in addresses]
    keys = np.arange(20, dtype=np.int64)
    owner = shard_of_keys(keys, 2)
    try:
        for k, (_, stub) in enumerate(stubs):
            stub.DeclareVariables(pb.DeclareVariablesRequest(
                variables=[pb.VariableSpec(name=f"big/part_{k}", dtype="float32",
                                           shape=[2, 2])],
                tables=[pb.TableSpec(name="t", dim=2, dtype="float32",
                                     initializer="zeros")]), timeout=TIMEOUT)
            request = pb.InitializeVariablesRequest()
            codec.encode(np.full((2, 2), k, np.float32),
                         request.values.add(name=f"big/part_{k}").tensor)
            request.table_rows.add(name="t")
            mine = keys[owner == k]
            rows = request.table_rows[0]
            codec.encode(mine, rows.fields.add(name="keys").tensor)
            codec.encode(np.stack([mine, -mine], axis=1).astype(np.float32),
                         rows.fields.add(name="values").tensor)
            stub.InitializeVariables(request, timeout=TIMEOUT)
        job = JobFollower(addresses)
        try:
            assert job.wait_synced(TIMEOUT)
            wanted = np.array([[3, 17], [99, 0]], dtype=np.int64)
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline:
                rows = job.lookup("t", wanted)
                if rows[0, 0, 0] == 3 and rows[0, 1, 0] == 17:
                    break
                time.sleep(0.02)
            assert rows.shape == (2, 2, 2)
            assert rows[0].tolist() == [[3, -3], [17, -17]]
            assert rows[1].tolist() == [[0, 0], [0, 0]]  # 99: no row; 0: a row of zeros
            assert job.dense("big").tolist() == [[0, 0], [0, 0], [1, 1], [1, 1]]
            assert job.dense("nothing") is None and job.lookup("nothing", [1]) is None
            arrived = []
            job.on_dense(lambda: arrived.append(1) or False)  # dropped after its first call
            _, stub = stubs[0]
            request = pb.InitializeVariablesRequest(overwrite=True)
            codec.encode(np.full((2, 2), 5, np.float32),
                         request.values.add(name="big/part_0").tensor)
            stub.InitializeVariables(request, timeout=TIMEOUT)
            deadline = time.monotonic() + TIMEOUT
            while job.dense("big")[0, 0] != 5:
                assert time.monotonic() < deadline, "the new value did not arrive"
                time.sleep(0.02)
            assert job.dense("big").tolist() == [[5, 5], [5, 5], [1, 1], [1, 1]]
            assert arrived == [1]
        finally:
            job.stop()
    finally:
        for channel, _ in stubs:
            channel.close()
        for server in servers:
            server.stop(grace=0)


def test_a_capped_table_trained_by_a_session_is_what_a_job_follower_reads(tmp_path):
    servers = [ParameterServer(shard=k, num_workers=1, publish_period=0.02,
                               dense_period=0.1).start() for k in range(2)]
    addresses = [f"127.0.0.1:{s.port}" for s in servers]
    job = JobFollower(addresses)
    try:
        with tf.Graph().as_default() as graph:
            keys = tf.placeholder(tf.int64, shape=(None,), name="keys")
            table = tf.get_embedding_variable("emb", embedding_dim=3, max_rows=30)
            w = tf.Variable(np.ones((2, 3), np.float32), name="w")
            rows = tf.nn.embedding_lookup(table, keys)
            loss = tf.reduce_sum(tf.square(rows)) + tf.reduce_sum(tf.square(w))
            train = tf.train.GradientDescentOptimizer(0.1).minimize(
                loss, global_step=tf.train.get_or_create_global_step())
            session = DistributedSession(graph, TaskConfig(ClusterSpec(
                {"ps": addresses, "worker": ["127.0.0.1:0"]}), "worker", 0))
            try:
                for step in range(12):  # 10 new keys a step: the cap of 15 per shard holds
                    session.run(train, {keys: np.arange(step * 10, step * 10 + 10)})
                probe = np.arange(0, 120)
                held = [len(s.store.tables.held["emb"].table) for s in servers]
                assert all(0 < n <= 15 for n in held), held
                assert job.wait_synced(TIMEOUT)
                expected = session.run(rows, {keys: probe})
                deadline = time.monotonic() + TIMEOUT
                while not (np.array_equal(job.lookup("emb", probe), expected) and
                           np.array_equal(job.dense("w"), session.run(w))):
                    assert time.monotonic() < deadline, "the job follower did not converge"
                    time.sleep(0.05)
                assert np.count_nonzero(expected.any(axis=1)) == sum(held)
                assert set(np.flatnonzero(expected.any(axis=1))) >= set(range(110, 120))
            finally:
                session.close()
    finally:
        job.stop()
        for server in servers:
            server.stop(grace=0)
