"""Synchronous and bounded-staleness training through shards run as chains of two replicas
(in this process, gRPC on loopback, worker threads each with its own graph and session):
the same values, slots and global step as through lone shards, also when a replica dies in
the middle of a step (stopped here, or a replica process killed as by kill -9) and the
workers fail over through the chain master."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import psflow as tf
from launcher.resources import free_ports
from psflow.proto import psflow_pb2 as pb
from psflow.ps import chain_master, faults
from psflow.ps.shard_server import ParameterServer
from psflow.train.cluster import ClusterSpec, TaskConfig
from psflow.worker.client import ShardClient
from psflow.worker.distributed_session import DistributedSession
from test_replication import assert_same_state, state
from test_sync import in_threads
from waiting import wait_for

WORKERS = 2
STEPS = 6
TIMEOUT_S = 30


@pytest.fixture(autouse=True)
def no_faults():
    yield
    faults.clear()


@pytest.fixture
def servers():
    """servers(shards, replicas, master=False, workers=WORKERS) -> ([[head, ...] of each
    shard], the chain master or None); all stopped after the test."""
    started, masters = [], []

    def start(shards, replicas, master=False, workers=WORKERS):
        chains = [[ParameterServer(shard=s, num_workers=workers,
                                   heartbeat_s=0.05).start()
                   for _ in range(replicas)] for s in range(shards)]
        started.extend(r for c in chains for r in c)
        if master:
            masters.append(chain_master.ChainMaster(
                {s: [r.address for r in c] for s, c in enumerate(chains)},
                lease_s=0.4, check_s=0.02).start())
            for server in (r for c in chains for r in c):
                server.heartbeat_to(masters[0].address)
            wait_for(lambda: all(r.servicer.replication.lease.remaining() > 0
                                 for c in chains for r in c), 5, "every replica's lease")
        elif replicas > 1:
            install(chains)
        return chains, masters[0] if master else None

    yield start
    faults.clear()
    for master in masters:
        master.stop()
    for server in started:
        server.stop(grace=0)


def install(chains):
    for chain in chains:
        addresses = [server.address for server in chain]
        for index in reversed(range(len(chain))):
            client = ShardClient(index, addresses[index], token="")
            try:
                client.call("InstallChain", pb.ChainConfig(epoch=1, replicas=addresses,
                                                           index=index))
            finally:
                client.close()


def model(make_optimizer):
    keys = tf.placeholder(tf.int64, shape=(None, 2), name="keys")
    y = tf.placeholder(tf.float64, shape=(None,), name="y")
    table = tf.get_embedding_variable("emb", 3, value_dtype=tf.float64,
                                      initializer=tf.random_normal_initializer(seed=3))
    w = tf.Variable(np.linspace(1, -1, 3), name="w")
    b = tf.Variable(np.zeros(1), name="b")
    rows = tf.nn.embedding_lookup(table, keys)
    hidden = tf.tanh(tf.reduce_sum(rows, axis=1))
    loss = tf.reduce_mean(tf.square(tf.reduce_sum(hidden * w, axis=1) + b - y))
    step = tf.train.get_or_create_global_step()
    return keys, y, rows, make_optimizer().minimize(loss, global_step=step), step, [w, b]


def data(step, worker):
    rng = np.random.default_rng([5, step, worker])
    return rng.integers(0, 30, size=(8, 2)), rng.normal(size=8)


def heads(chains):
    return [chain[0].address for chain in chains]


def train(addresses, make_optimizer, master=None, on_step=None, steps=STEPS, workers=WORKERS):
    """Trains `workers` worker threads for `steps` steps each through the shards' heads
    (`addresses`); returns {worker: [the probed rows, w, b, global step]}. on_step(worker, k)
    runs before each step."""
    probe = np.stack([np.arange(30)] * 2, axis=1)
    cluster = ClusterSpec({"ps": addresses,
                           "worker": ["127.0.0.1:0"] * workers})

    def work(index):
        with tf.Graph().as_default() as graph:
            keys, y, rows, train_op, step, dense = model(make_optimizer)
            session = DistributedSession(graph, TaskConfig(cluster, "worker", index,
                                                           chain_master=master))
            try:
                for k in range(steps):
                    if on_step is not None:
                        on_step(index, k)
                    bk, by = data(int(session.run(step)), index)
                    session.run(train_op, {keys: bk, y: by})
                return session.run([rows, *dense, step], {keys: probe})
            finally:
                session.close()

    return in_threads(workers, work)


def sync_adagrad():
    return tf.train.SyncReplicasOptimizer(tf.train.AdagradOptimizer(0.3), WORKERS, WORKERS)


def assert_same_results(got, expected):
    for worker in range(WORKERS):
        for a, b in zip(got[worker], expected[worker], strict=True):
            np.testing.assert_array_equal(a, b)


def test_sync_through_chains_of_two_equals_sync_through_lone_shards(servers):
    lone, _ = servers(2, 1)
    chains, _ = servers(2, 2)
    expected = train(heads(lone), sync_adagrad)
    got = train(heads(chains), sync_adagrad)
    assert_same_results(got, expected)
    assert got[0][-1] == STEPS
    for chain, alone in zip(chains, lone, strict=True):
        assert_same_state(state(chain[0]), state(alone[0]))
        assert_same_state(state(chain[1]), state(chain[0]))
    # Every step decided once, at the head, and applied so by its tail.
    assert chains[0][1].store.sync.decisions == chains[0][0].store.sync.decisions
    assert {step: set(workers) for step, workers in chains[0][1].store.sync.decisions.items()} \
        == {step: {0, 1} for step in range(STEPS)}
    assert chains[1][1].store.sync.applied == STEPS
    assert chains[0][0].store.stats()["dropped"] == 0


def kill_when_reached(server, point, shard, replica):
    """Stalls replica `replica` of `shard` at fault `point` the next time it passes there,
    then stops `server` (that replica): a thread to start."""
    stall = faults.install(faults.Fault("stall", point, shard, replica))

    def kill():
        if stall.reached.wait(20):
            server.stop(grace=0)
    return threading.Thread(target=kill, daemon=True)


@pytest.mark.parametrize("shard, replica, point", [
    (0, 0, "before-forward"),  # shard 0's head applied a write, which dies with it
    (0, 0, "before-ack"),  # shard 0's head dies once the tail holds the write
    (1, 0, "before-forward"),  # a commit or pending push dies with the head
    (0, 1, "before-forward"),  # shard 0's tail dies before acknowledging: its head goes on
])
@pytest.mark.cluster  # a concurrency or timing run
def test_sync_through_chains_equals_lone_shards_when_a_replica_dies_mid_step(
        servers, shard, replica, point):
    lone, _ = servers(2, 1)
    chains, master = servers(2, 2, master=True)
    expected = train(heads(lone), sync_adagrad)
    killer = []

    def on_step(index, k):
        if index == 0 and k == 3:
            killer.append(kill_when_reached(chains[shard][replica], point, shard, replica))
            killer[0].start()

    got = train(heads(chains), sync_adagrad, master.address, on_step)
    killer[0].join(5)
    assert chains[shard][replica].stopped
    survivor = chains[shard][1 - replica]
    assert master.chain(shard) == (2, [survivor.address])
    assert_same_results(got, expected)
    for chain, alone in zip(chains, lone, strict=True):
        live = [r for r in chain if not r.stopped]
        for server in live:
            assert_same_state(state(server), state(alone[0]))
    assert survivor.store.stats()["dropped"] == 0


def ssp():
    return tf.train.BoundedStalenessOptimizer(tf.train.GradientDescentOptimizer(0.1),
                                              staleness=1)


@pytest.mark.cluster  # a concurrency or timing run
def test_ssp_through_chains_of_two_counts_every_push_once(servers):
    chains, master = servers(2, 2, master=True)
    killer = []

    def on_step(index, k):
        if index == 1 and k == 2:
            killer.append(kill_when_reached(chains[0][0], "before-ack", 0, 0))
            killer[0].start()

    results = train(heads(chains), ssp, master.address, on_step)
    killer[0].join(5)
    head = chains[0][1]
    assert chains[0][0].stopped and master.chain(0) == (2, [head.address])
    assert head.store.global_step == WORKERS * STEPS
    assert max(r[-1] for r in results.values()) == WORKERS * STEPS
    assert head.store.sync.clocks == {w: STEPS for w in range(WORKERS)}
    assert sum(row[6] for row in head.store.members.rows()) == WORKERS * STEPS
    assert_same_state(state(chains[1][1]), state(chains[1][0]))


@pytest.mark.cluster  # a replica process killed as by kill -9, two seconds or three
def test_sync_through_chains_equals_lone_shards_when_shard_0s_head_process_is_killed(servers):
    lone, _ = servers(2, 1)
    expected = train(heads(lone), sync_adagrad)
    head_port, master_port = free_ports("127.0.0.1", 2)
    head, master_address = f"127.0.0.1:{head_port}", f"127.0.0.1:{master_port}"
    # Shard 0's head exits 137 at the 15th write it applied, before passing it on.
    process = subprocess.Popen(
        [sys.executable, "-m", "psflow.ps", "--task-index", "0", "--num-workers", str(WORKERS),
         "--port", str(head_port), "--chain-master", master_address,
         "--heartbeat-interval", "0.05"],
        env=dict(os.environ, PSFLOW_FAULT="kill:before-forward:0:0:1:14"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    others = [[ParameterServer(shard=s, num_workers=WORKERS, heartbeat_s=0.05).start()
               for _ in range(2 - (s == 0))] for s in range(2)]
    for server in (r for c in others for r in c):
        server.heartbeat_to(master_address)
    master = chain_master.ChainMaster(
        {0: [head, others[0][0].address], 1: [r.address for r in others[1]]},
        port=master_port, lease_s=0.5, check_s=0.02).start()
    try:
        wait_for(lambda: master.chain(0)[0] == 1 and master.chain(1)[0] == 1, 20,
                 "both chains installed")
        got = train([head, others[1][0].address], sync_adagrad, master.address)
        assert process.wait(timeout=TIMEOUT_S) == 137
        assert "before-forward" in process.stderr.read()
        assert master.chain(0) == (2, [others[0][0].address])
        assert_same_results(got, expected)
        assert_same_state(state(others[0][0]), state(lone[0][0]))
        for server in others[1]:
            assert_same_state(state(server), state(lone[1][0]))
    finally:
        master.stop()
        for server in (r for c in others for r in c):
            server.stop(grace=0)
        if process.poll() is None:
            process.kill()
        process.wait()


def test_backup_workers_steps_are_decided_once_for_every_replica(servers):
    """Three workers, steps of two: each step takes the first two pushes at the head, drops
    the third, and every replica applies the same steps and drops the same pushes."""
    chains, _ = servers(2, 2, workers=3)
    make = lambda: tf.train.SyncReplicasOptimizer(  # noqa: E731
        tf.train.GradientDescentOptimizer(0.05), replicas_to_aggregate=2, total_num_replicas=3)
    train(heads(chains), make, steps=5, workers=3)
    head, tail = chains[0]
    decisions = head.store.sync.decisions
    assert tail.store.sync.decisions == decisions
    assert head.store.stats()["dropped"] == tail.store.stats()["dropped"] > 0
    assert sorted(decisions) == list(range(head.store.global_step))
    assert {len(workers) for workers in decisions.values()} <= {1, 2}
    for chain in chains:
        assert_same_state(state(chain[1]), state(chain[0]))
