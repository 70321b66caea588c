"""A worker's distributed session trains through 2 shards run as chains of 2 replicas under a
chain master (in this process, gRPC on loopback); the head of shard 0 dies in the middle of a
push (a fault stalls it after the chain applied the push, then it stops), and the session
finishes without an error, every acknowledged update applied once: the result equals the run
without the failure."""

import json
import threading

import numpy as np
import pytest

import psflow as tf
from launcher.job_spec import JobSpec
from psflow.ps import chain_master, faults
from psflow.ps.shard_server import ParameterServer
from psflow.train.cluster import ClusterSpec, TaskConfig, task_config_from_env
from psflow.worker.distributed_session import DistributedSession
from test_replication import assert_same_state, state
from waiting import wait_for

STEPS = 8


@pytest.fixture(autouse=True)
def fresh_graph():
    with tf.Graph().as_default() as graph:
        yield graph
    faults.clear()


def train(graph, heads, master=None, mid_run=None):
    """Trains an embedding table and a dense layer for STEPS steps; `mid_run()` is called
    before step 4. Returns the session's reads of the trained rows and weights."""
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
            for _ in range(STEPS)]
    cluster = ClusterSpec({"ps": heads, "worker": ["127.0.0.1:0"]})
    session = DistributedSession(graph, TaskConfig(cluster, "worker", 0, chain_master=master))
    try:
        for i, (k, t) in enumerate(data):
            if i == 4 and mid_run is not None:
                mid_run()
            session.run(train_op, {keys: k, y: t})
        probe = np.arange(40).repeat(2).reshape(-1, 2)
        return session.run([rows, w, step], {keys: probe})
    finally:
        session.close()


@pytest.mark.cluster  # a concurrency or timing run
def test_a_head_that_dies_mid_push_is_replaced_without_the_session_noticing(fresh_graph):
    lone = [ParameterServer(shard=s, num_workers=1).start() for s in range(2)]
    chains = [[ParameterServer(shard=s, num_workers=1, heartbeat_s=0.05).start()
               for _ in range(2)] for s in range(2)]
    master = chain_master.ChainMaster({s: [r.address for r in c] for s, c in enumerate(chains)},
                                      lease_s=0.4, check_s=0.02).start()
    for server in (r for c in chains for r in c):
        server.heartbeat_to(master.address)
    wait_for(lambda: all(r.servicer.replication.lease.remaining() > 0
                         for c in chains for r in c), 5, "every replica's first lease")
    killer = []

    def kill_head_mid_push():
        # The head of shard 0 applied the next write and the tail acknowledged it; it dies
        # before answering the worker.
        stall = faults.install(faults.Fault("stall", "before-ack", 0, 0))

        def kill():
            if stall.reached.wait(10):
                chains[0][0].stop(grace=0)
        killer.append(threading.Thread(target=kill, daemon=True))
        killer[0].start()

    try:
        expected = train(fresh_graph, [s.address for s in lone])
        with tf.Graph().as_default() as graph:
            got = train(graph, [c[0].address for c in chains], master.address,
                        kill_head_mid_push)
        killer[0].join(5)
        assert chains[0][0].stopped
        assert master.chain(0) == (2, [chains[0][1].address])
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_array_equal(a, b)
        assert got[2] == STEPS
        assert_same_state(state(chains[0][1]), state(lone[0]))
        assert_same_state(state(chains[1][1]), state(lone[1]))
    finally:
        faults.clear()
        master.stop()
        for server in lone + [r for c in chains for r in c]:
            server.stop(grace=0)


def test_tf_config_names_the_chain_master_in_a_key_of_its_own():
    cluster = '"cluster": {"ps": ["h:1"], "worker": ["h:2"]}, "task": {"type": "worker"}'
    task = task_config_from_env({"TF_CONFIG": "{" + cluster + "}"})
    assert task.chain_master is None
    task = task_config_from_env(
        {"TF_CONFIG": "{" + cluster + ', "psflow": {"chain_master": "m:9"}}'})
    assert task.chain_master == "m:9"
    with pytest.raises(ValueError, match="chain_master"):
        task_config_from_env({"TF_CONFIG": "{" + cluster + ', "psflow": {"chain_master": 9}}'})


def test_the_launchers_tf_config_carries_the_replicas_beside_the_cluster():
    spec = JobSpec(script="train.py", workers=1, ps=1)
    assert "psflow" not in json.loads(spec.tf_config(["a:1"], "worker", 0))
    text = spec.tf_config(["a:1"], "worker", 0, ps_replicas=[["a:1", "b:1"]],
                          chain_master="m:9")
    assert json.loads(text)["psflow"] == {"ps_replicas": [["a:1", "b:1"]], "chain_master": "m:9"}
    task = task_config_from_env({"TF_CONFIG": text})
    assert task.ps_addresses == ["a:1"] and task.chain_master == "m:9"
