"""Checkpoints and the model file: written by the chief, read back on resume (with any number
of parameter servers), never pickled, refused when damaged, and safe against a crash at any
moment of writing."""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import psflow as tf
from psflow import checkpoint as files
from psflow.errors import DataLossError
from psflow.ps.shard_server import ParameterServer
from psflow.train import saver
from psflow.train.cluster import ClusterSpec, TaskConfig
from psflow.worker.distributed_session import DistributedSession
from waiting import wait_for

SCRIPTS = Path(__file__).resolve().parent / "cluster_scripts"
ROOT = Path(__file__).resolve().parent.parent


def build(seed=0):
    """A small model trained with Adam (so there are slots); returns (feeds, train, step,
    variables)."""
    x = tf.placeholder(tf.float32, shape=(None, 6), name="x")
    y = tf.placeholder(tf.float32, shape=(None,), name="y")
    w = tf.Variable(np.linspace(-1, 1, 24, dtype=np.float32).reshape(6, 4), name="dense/w")
    b = tf.Variable(np.zeros(4, np.float32), name="dense/b")
    v = tf.Variable(np.ones(4, np.float32), name="out/v")
    loss = tf.reduce_mean(tf.square(tf.reduce_sum(tf.tanh(x @ w + b) * v, axis=1) - y))
    step = tf.train.get_or_create_global_step()
    train = tf.train.AdamOptimizer(0.05).minimize(loss, global_step=step)
    return (x, y), train, step, [w, b, v]


def batch(k):
    rng = np.random.default_rng(k)
    return rng.normal(size=(8, 6)).astype(np.float32), rng.normal(size=8).astype(np.float32)


def train_local(steps, checkpoint_dir=None, **kwargs):
    """Trains with MonitoredTrainingSession until global step `steps`; returns the values."""
    with tf.Graph().as_default():
        (x, y), train, step, variables = build()
        hooks = [tf.train.StopAtStepHook(last_step=steps)]
        with tf.train.MonitoredTrainingSession(checkpoint_dir=checkpoint_dir, hooks=hooks,
                                               **kwargs) as sess:
            first = int(sess.run(step))
            while not sess.should_stop():
                bx, by = batch(int(sess.run(step)))
                sess.run(train, {x: bx, y: by})
            values = sess.run(variables)
        return first, values


def test_resuming_locally_continues_exactly_where_it_stopped(tmp_path):
    _, straight = train_local(12)
    first, _ = train_local(7, tmp_path, save_checkpoint_steps=3, max_to_keep=2)
    assert first == 0
    kept = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ckpt-"))
    assert len(kept) == 2 and kept[-1] == files.checkpoint_name(7)
    first, resumed = train_local(12, tmp_path, save_checkpoint_steps=3)
    assert first == 7  # values, Adam's slots and the global step all came back
    for got, want in zip(resumed, straight, strict=True):
        np.testing.assert_array_equal(got, want)


def test_the_model_file_loads_with_numpy_alone(tmp_path):
    _, values = train_local(5, tmp_path, save_checkpoint_steps=100)
    model = tf.load_model(tmp_path / files.MODEL_FILE)
    assert sorted(model) == ["dense/b", "dense/w", "out/v"]
    with np.load(tmp_path / files.MODEL_FILE, allow_pickle=False) as plain:
        np.testing.assert_array_equal(plain["dense/w"], values[0])
    np.testing.assert_array_equal(model["out/v"], values[2])
    # The checkpoint directory itself loads too: the latest checkpoint's values.
    np.testing.assert_array_equal(tf.load_model(tmp_path)["dense/b"], values[1])


# -- damage ----------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    train_local(4, tmp_path, save_checkpoint_steps=100)
    return tmp_path, Path(files.latest(tmp_path))


def test_a_tampered_shard_file_is_refused(saved):
    directory, latest = saved
    shard = latest / "shard-0.npz"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataLossError, match="does not match its checksum"):
        tf.load_model(directory)
    with pytest.raises(DataLossError, match="shard-0.npz"):
        train_local(6, directory)


def test_a_truncated_shard_file_is_refused(saved):
    directory, latest = saved
    shard = latest / "shard-0.npz"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(DataLossError, match="truncated or changed"):
        tf.load_model(directory)


def test_a_missing_shard_file_or_a_bad_pointer_is_named(saved):
    directory, latest = saved
    (latest / "shard-0.npz").unlink()
    with pytest.raises(DataLossError, match="shard-0.npz is missing"):
        tf.load_model(directory)
    (directory / files.POINTER).write_text("{\"latest\": \"../../etc\"}")
    with pytest.raises(DataLossError, match="not a checkpoint"):
        tf.load_model(directory)


def test_a_truncated_model_file_is_refused(saved):
    directory, _ = saved
    model = directory / files.MODEL_FILE
    model.write_bytes(model.read_bytes()[:-50])
    with pytest.raises(DataLossError, match="cannot be read"):
        tf.load_model(model)


def latest_step(checkpoint_dir):
    """The global step of the latest checkpoint in `checkpoint_dir`, -1 when there is none."""
    checkpoint = files.latest(checkpoint_dir)
    return -1 if checkpoint is None else int(Path(checkpoint).name.removeprefix("ckpt-"))


@pytest.mark.cluster  # a server process's life and death, seconds long
def test_killed_while_writing_checkpoints_the_latest_always_loads(tmp_path):
    """A process saving a checkpoint at every step is killed with SIGKILL at random moments;
    after each kill the latest checkpoint loads and its global step never goes back."""
    script = SCRIPTS / "checkpoint_every_step.py"
    rng = random.Random(0)
    last_step = -1
    for round_ in range(6):
        process = subprocess.Popen([sys.executable, str(script), str(tmp_path)], cwd=ROOT)
        try:
            # Once it has saved past the last step seen, it saves at every step: a kill a
            # little later lands at a random moment of some save.
            wait_for(lambda p=process, seen=last_step: p.poll() is not None
                     or latest_step(tmp_path) > seen, 60, f"round {round_}'s first checkpoint")
            assert process.poll() is None, f"the script exited with {process.returncode}"
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        checkpoint = files.latest(tmp_path)
        step, values, slots = files.read_checkpoint(checkpoint)
        assert step >= last_step
        assert set(values) == {"dense/w", "dense/b", "out/v"}
        assert ("dense/w", "adam", "m") in slots
        last_step = step
    assert last_step > 0
    # Unfinished checkpoints never became the latest, and a save cleans up after them.
    train_local(last_step + 1, tmp_path, save_checkpoint_steps=1, max_to_keep=3)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("ckpt-")]) == 3


# -- distributed -----------------------------------------------------------------------------
def start_servers(count, checkpoint_root):
    servers = [ParameterServer(shard=i, num_workers=1, checkpoint_root=checkpoint_root)
               for i in range(count)]
    for server in servers:
        server.start()
    return servers


def distributed_session(graph, servers, restore=None):
    spec = ClusterSpec({"ps": [f"127.0.0.1:{s.port}" for s in servers],
                        "worker": ["127.0.0.1:0"]})
    # Small parts, so dense/w is split over the shards and re-split differently on resume.
    return DistributedSession(graph, TaskConfig(spec, "worker", 0), partition_bytes=40,
                              restore=restore)


@pytest.mark.parametrize("before,after", [(2, 3), (3, 1)])
def test_resuming_with_another_number_of_servers_gives_the_same_model(tmp_path, before, after):
    _, straight = train_local(10)
    servers = start_servers(before, tmp_path)
    try:
        with tf.Graph().as_default() as graph:
            (x, y), train, step, variables = build()
            session = distributed_session(graph, servers)
            assert len(session.store.placement.parts_of(variables[0])) > 1
            for k in range(6):
                session.run(train, {x: batch(k)[0], y: batch(k)[1]})
            session.save_checkpoint(str(tmp_path), variables, step, 3)
            saved_values = session.run(variables)
            session.close()
    finally:
        for server in servers:
            server.stop(grace=0)
    servers = start_servers(after, tmp_path)
    try:
        with tf.Graph().as_default() as graph:
            (x, y), train, step, variables = build()
            state = saver.latest_state(str(tmp_path), [v for v in graph.variables
                                                       if v is not step])
            session = distributed_session(graph, servers, restore=state)
            assert int(session.run(step)) == 6
            for got, want in zip(session.run(variables), saved_values, strict=True):
                np.testing.assert_array_equal(got, want)
            for k in range(6, 10):
                session.run(train, {x: batch(k)[0], y: batch(k)[1]})
            resumed = session.run(variables)
            session.close()
    finally:
        for server in servers:
            server.stop(grace=0)
    for got, want in zip(resumed, straight, strict=True):  # the slots came back too
        np.testing.assert_allclose(got, want, rtol=1e-6)
