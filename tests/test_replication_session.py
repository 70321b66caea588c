"""The worker's distributed session trains through shards run as chains of two replicas (in
this process, gRPC on loopback) exactly as through lone shards, and every replica ends holding
what its head holds."""

import numpy as np
import pytest

import psflow as tf
from psflow.proto import psflow_pb2 as pb
from psflow.ps.shard_server import ParameterServer
from psflow.train.cluster import ClusterSpec, TaskConfig
from psflow.worker.client import ShardClient
from psflow.worker.distributed_session import DistributedSession
from test_replication import assert_same_state, state


@pytest.fixture(autouse=True)
def fresh_graph():
    with tf.Graph().as_default() as graph:
        yield graph


def start_shards(replicas, shards=2):
    """[[head, ...] of each shard], each a chain of `replicas` (a lone server when 1)."""
    chains = [[ParameterServer(shard=s, num_workers=1).start() for _ in range(replicas)]
              for s in range(shards)]
    for chain in chains if replicas > 1 else ():
        addresses = [server.address for server in chain]
        for index in reversed(range(replicas)):
            client = ShardClient(index, addresses[index], token="")
            try:
                client.call("InstallChain", pb.ChainConfig(epoch=1, replicas=addresses,
                                                           index=index))
            finally:
                client.close()
    return chains


def train(graph, chains):
    """Trains an embedding table and a dense layer for 8 steps through the heads; returns
    the session's reads of the trained rows and weights."""
    keys = tf.placeholder(tf.int64, shape=(None, 2), name="keys")
    y = tf.placeholder(tf.float32, shape=(None,), name="y")
    table = tf.get_embedding_variable("emb", embedding_dim=4)
    w = tf.Variable(np.ones(4, np.float32), name="w")
    rows = tf.nn.embedding_lookup(table, keys)
    loss = tf.reduce_mean(tf.square(tf.reduce_sum(rows * w, axis=[1, 2]) - y))
    step = tf.train.get_or_create_global_step()
    train_op = tf.train.AdagradOptimizer(0.3).minimize(loss, global_step=step)
    rng = np.random.default_rng(11)
    data = [(rng.integers(0, 40, size=(6, 2)), rng.normal(size=6).astype(np.float32))
            for _ in range(8)]
    cluster = ClusterSpec({"ps": [chain[0].address for chain in chains],
                           "worker": ["127.0.0.1:0"]})
    session = DistributedSession(graph, TaskConfig(cluster, "worker", 0))
    try:
        for k, t in data:
            session.run(train_op, {keys: k, y: t})
        probe = np.arange(40).repeat(2).reshape(-1, 2)
        return session.run([rows, w, step], {keys: probe})
    finally:
        session.close()


def test_training_through_chains_of_two_equals_training_through_lone_shards(fresh_graph):
    lone, replicated = start_shards(1), start_shards(2)
    try:
        expected = train(fresh_graph, lone)
        with tf.Graph().as_default() as graph:
            got = train(graph, replicated)
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_array_equal(a, b)
        assert got[2] == 8
        for chain, alone in zip(replicated, lone, strict=True):
            assert_same_state(state(chain[0]), state(alone[0]))
            assert_same_state(state(chain[1]), state(chain[0]))
            assert chain[1].store.members.rows()[0][2]  # the worker's farewell reached it
    finally:
        for server in [s for chain in lone + replicated for s in chain]:
            server.stop(grace=0)
