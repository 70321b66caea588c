"""Patterns of public TF1 scripts, each as the script writes it: a float32 global step made
with get_variable, and TensorFlow's distributed how-to started by hand (a ps task that
join()s, a worker whose MonitoredTrainingSession checkpoints into the temporary folder)."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import psflow as tf
from psflow.launcher.resources import free_ports

SCRIPTS = Path(__file__).resolve().parent / "tf1_scripts"


def test_a_float32_global_step_made_with_get_variable_counts_the_steps():
    graph = tf.Graph()
    with graph.as_default():
        step = tf.get_variable("global_step", [], initializer=tf.constant_initializer(0),
                               trainable=False)
        w = tf.Variable(np.ones(2, np.float32), name="w")
        loss = tf.reduce_sum(w * w)
        train = tf.train.GradientDescentOptimizer(0.25).minimize(loss, global_step=step)
        assert tf.train.get_global_step() is step
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            for _ in range(3):
                sess.run(train)
            value = sess.run(step)
            assert value.dtype == np.float32 and value == 3.0
            np.testing.assert_allclose(sess.run(w), np.full(2, 0.125, np.float32))


def test_a_float32_global_step_stops_a_monitored_session_at_its_last_step(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        step = tf.get_variable("global_step", [], initializer=tf.constant_initializer(0),
                               trainable=False)
        w = tf.Variable(np.ones(2, np.float32), name="w")
        train = tf.train.GradientDescentOptimizer(0.1).minimize(tf.reduce_sum(w * w),
                                                                global_step=step)
        runs = 0
        with tf.train.MonitoredTrainingSession(
                checkpoint_dir=str(tmp_path), hooks=[tf.train.StopAtStepHook(last_step=5)]) \
                as sess:
            while not sess.should_stop():
                sess.run(train)
                runs += 1
    assert runs == 5


@pytest.mark.cluster
def test_the_distributed_howto_started_by_hand_checkpoints_into_the_temporary_folder(tmp_path):
    ps_port, worker_port = free_ports("127.0.0.1", 2)
    hosts = [f"--ps_hosts=127.0.0.1:{ps_port}", f"--worker_hosts=127.0.0.1:{worker_port}"]
    logs = tempfile.mkdtemp(prefix="train_logs-")  # the how-to's /tmp/train_logs
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PSFLOW_", "TF_CONFIG"))}
    script = str(SCRIPTS / "distributed_howto.py")
    ps = subprocess.Popen([sys.executable, script, *hosts, "--job_name=ps", "--task_index=0"],
                          cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    try:
        worker = subprocess.run([sys.executable, script, *hosts, "--job_name=worker",
                                 "--task_index=0", "--train_steps=100",
                                 f"--checkpoint_dir={logs}"],
                                cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=180)
        assert worker.returncode == 0, worker.stdout + worker.stderr
        assert "test accuracy" in worker.stdout
        assert any(name.startswith("model.ckpt") or name == "checkpoint"
                   for name in os.listdir(logs)), os.listdir(logs)
        assert ps.wait(60) == 0  # the ps task's join() returns once its worker is done
    finally:
        if ps.poll() is None:
            ps.kill()
            ps.wait()
