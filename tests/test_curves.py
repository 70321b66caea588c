"""The chief's TensorBoard curves of the job (psflow.worker.curves): the scalars written for
constructed looks at the shards, read back by TensorBoard's own reader; the thread against
stand-in shards, one of which fails; and a whole job under `launch`, whose curves sit beside
the script's own summaries."""

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from psflow.errors import UnavailableError
from psflow.proto import psflow_pb2 as pb
from psflow.worker import curves
from psflow.worker.curves import JobCurves
from psflow.worker.jobstats import Look

ROOT = Path(__file__).resolve().parent.parent
NAN = float("nan")


def read_scalars(logdir):
    """{tag: [(step, value)]} of every event file in `logdir`, read by TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def worker(index, local_step, loss, examples, done=False):
    return pb.WorkerStats(task_index=index, registered=True, done=done, local_step=local_step,
                          loss=loss, examples=examples)


def shard(index, pushes, staleness, global_step=0, workers=()):
    return pb.StatsResponse(shard=index, global_step=global_step, pushes=pushes,
                            staleness_histogram=staleness, workers=list(workers))


# -- the write step, against constructed looks ----------------------------------------------------
def test_each_write_holds_the_interval_s_rates_at_the_job_s_global_step(tmp_path):
    job_curves = JobCurves([], tmp_path, interval=2.0)
    start = Look(100.0, [
        shard(0, 50, [10, 5, 0, 0], global_step=100,
              workers=[worker(0, 40, 1.0, 320), worker(1, 45, 2.0, 360), worker(2, 0, NAN, 0)]),
        shard(1, 50, [10, 5, 0, 0]),
    ])
    assert job_curves.write(start) == 0  # the first look only starts the first interval
    # 2 s later: 40 global steps, 320 examples; shard 0's staleness record grew by 100
    # gradients (60 fresh, 30 one step late, 8 two, 2 three or more), shard 1's not at all.
    assert job_curves.write(Look(102.0, [
        shard(0, 90, [70, 35, 8, 2], global_step=140,
              workers=[worker(0, 60, 0.5, 480), worker(1, 70, 0.25, 520), worker(2, 0, NAN, 0)]),
        shard(1, 70, [10, 5, 0, 0]),
    ])) == 8
    # Shard 1 does not answer: its pushes are left out, the rest is written.
    assert job_curves.write(Look(104.0, [
        shard(0, 100, [70, 35, 8, 2], global_step=150,
              workers=[worker(0, 65, 0.5, 480), worker(1, 75, 0.25, 520)]),
        None,
    ])) == 4
    # Without shard 0 there is no global step: nothing is written, and the next interval
    # starts from the last look that was.
    assert job_curves.write(Look(105.0, [None, shard(1, 80, [10, 5, 0, 0])])) == 0
    # Half a second after the last write (the write at the end of a job): measured from the
    # look before, over 2.5 s, rather than over half a second.
    assert job_curves.write(Look(104.5, [
        shard(0, 115, [70, 35, 8, 2], global_step=160,
              workers=[worker(0, 70, 0.125, 500), worker(1, 80, 0.125, 540)]),
        shard(1, 95, [10, 5, 0, 0]),
    ])) == 5
    job_curves.close()
    assert job_curves.write(Look(110.0, [shard(0, 0, [], global_step=200)])) == 0

    assert read_scalars(tmp_path) == {
        "psflow/loss": [(140, 0.375), (150, 0.375), (160, 0.125)],
        "psflow/global_steps_per_sec": [(140, 20.0), (150, 5.0), (160, 8.0)],
        "psflow/examples_per_sec": [(140, 160.0), (150, 0.0), (160, 16.0)],
        "psflow/staleness_p50": [(140, 0.0)],
        "psflow/staleness_p90": [(140, 1.0)],
        "psflow/staleness_p99": [(140, 3.0)],
        "psflow/ps_0/pushes_per_sec": [(140, 20.0), (150, 5.0), (160, 10.0)],
        "psflow/ps_1/pushes_per_sec": [(140, 10.0), (160, 10.0)],
    }
    [event_file] = tmp_path.iterdir()
    assert event_file.name.endswith(curves.FILENAME_SUFFIX)


def test_what_an_interval_cannot_tell_is_left_out():
    # The job was restored from an older checkpoint (the global step went back), no worker
    # has reported a loss yet, no gradient was applied, and shard 1 did not answer before.
    before = Look(0.0, [shard(0, 40, [4], global_step=500, workers=[worker(0, 10, NAN, 64)]),
                        None])
    now = Look(4.0, [shard(0, 40, [4], global_step=420, workers=[worker(0, 30, NAN, 192)]),
                     shard(1, 6, [1])])
    assert curves.scalars(before, now) == {
        "psflow/examples_per_sec": 32.0,
        "psflow/ps_0/pushes_per_sec": 0.0,
    }


# -- the thread -----------------------------------------------------------------------------------
class StandInShard:
    """Answers GetStats like a shard whose counters grow by one step per call; `fails` makes
    every call fail as a server that went away does."""

    def __init__(self, index, fails=False):
        self.index, self.fails, self.calls = index, fails, 0

    def call(self, method, request, timeout=None, wait_for_ready=True):
        assert method == "GetStats" and not wait_for_ready
        if self.fails:
            raise UnavailableError(f"parameter server {self.index} is unavailable")
        self.calls += 1
        workers = [worker(0, self.calls, 1.0 / self.calls, 8 * self.calls)] \
            if self.index == 0 else []
        return shard(self.index, 4 * self.calls, [self.calls], global_step=10 * self.calls,
                     workers=workers)


def test_the_thread_writes_every_interval_and_once_more_when_stopped(tmp_path):
    shards = [StandInShard(0), StandInShard(1, fails=True)]
    job_curves = JobCurves(shards, tmp_path / "logs", interval=0.05)
    job_curves.start()
    deadline = time.monotonic() + 30
    while shards[0].calls < 4 and job_curves.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    job_curves.stop()
    assert not job_curves.is_alive()
    calls = shards[0].calls
    found = read_scalars(tmp_path / "logs")
    steps = [step for step, _ in found["psflow/global_steps_per_sec"]]
    assert steps[-1] == 10 * calls and steps == sorted(steps) and len(steps) >= 3
    assert all(value > 0 for _, value in found["psflow/global_steps_per_sec"])
    assert found["psflow/loss"][-1] == (10 * calls, pytest.approx(1.0 / calls))
    assert "psflow/ps_0/pushes_per_sec" in found
    assert "psflow/ps_1/pushes_per_sec" not in found  # its GetStats always failed
    job_curves.stop()  # a second stop changes nothing
    assert shards[0].calls == calls


def test_the_interval_comes_from_psflow_summary_secs(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PSFLOW_SUMMARY_SECS", "0.25")
    assert curves.interval_from_env() == 0.25
    for bad in ("soon", "0", "-1", "nan", "inf"):
        monkeypatch.setenv("PSFLOW_SUMMARY_SECS", bad)
        with pytest.raises(ValueError, match=f"PSFLOW_SUMMARY_SECS must be (a number of seconds|"
                                             f"more than 0 seconds), got '?{bad}'?$"):
            curves.interval_from_env()
    # In a session, a bad value is logged and the job trains without curves.
    assert JobCurves.started([], tmp_path) is None
    assert "PSFLOW_SUMMARY_SECS" in caplog.text and "curves are not written" in caplog.text
    assert not list(tmp_path.iterdir())
    monkeypatch.delenv("PSFLOW_SUMMARY_SECS")
    assert curves.interval_from_env() == 10.0


# -- a whole job ----------------------------------------------------------------------------------
SCRIPT = '''\
"""Linear regression for about three seconds with a checkpoint_dir (argv[1]), where the
script's own loss summary goes too."""

import sys
import time

import numpy as np

import psflow as tf
from psflow.worker.data import shard

rng = np.random.default_rng(0)
features = rng.normal(size=(256, 3))
targets = features @ np.array([[2.0], [-3.0], [0.5]]) + 4.0 + rng.normal(0, 0.1, (256, 1))
my_features, my_targets = shard(features, targets)

x = tf.placeholder(tf.float64, shape=(None, 3), name="x")
y = tf.placeholder(tf.float64, shape=(None, 1), name="y")
w = tf.Variable(np.zeros((3, 1)), name="w")
b = tf.Variable(np.zeros(1), name="b")
loss = tf.reduce_mean(tf.square(x @ w + b - y))
tf.summary.scalar("script_loss", loss)
step = tf.train.get_or_create_global_step()
train = tf.train.GradientDescentOptimizer(0.02).minimize(loss, global_step=step)

with tf.train.MonitoredTrainingSession(checkpoint_dir=sys.argv[1],
                                       save_summaries_steps=20) as sess:
    end = time.monotonic() + 3.0
    while not sess.should_stop() and time.monotonic() < end:
        for first in range(0, len(my_features), 16):
            sess.run(train, {x: my_features[first:first + 16],
                             y: my_targets[first:first + 16]})
'''


@pytest.mark.cluster
def test_a_job_s_curves_are_beside_the_script_s_summaries(tmp_path):
    script = tmp_path / "regression.py"
    script.write_text(SCRIPT)
    checkpoint_dir = tmp_path / "ckpt"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "psflow.launcher", "--no-progress", "--workers", "2", "--ps",
         "1", str(script), str(checkpoint_dir)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env=dict(os.environ, PSFLOW_SUMMARY_SECS="0.5"))
    elapsed = time.monotonic() - started
    assert result.returncode == 0, \
        f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\n" \
        f"stderr:\n{result.stderr[-3000:]}"
    found = read_scalars(checkpoint_dir)
    for tag in ("psflow/loss", "psflow/global_steps_per_sec", "psflow/examples_per_sec",
                "psflow/staleness_p50", "psflow/staleness_p90", "psflow/staleness_p99",
                "psflow/ps_0/pushes_per_sec"):
        assert tag in found, sorted(found)
    steps = [step for step, _ in found["psflow/global_steps_per_sec"]]
    assert len(steps) >= 3 and steps == sorted(steps) and steps[-1] > steps[0], steps
    # Each write's rate is the global steps since the write before over the seconds between
    # them, which are positive and within the job's run.
    rates = found["psflow/global_steps_per_sec"]
    for (before, _), (step, rate) in zip(rates[:-1], rates[1:], strict=True):
        if step == before:
            assert rate == 0, rates
        else:
            assert rate > 0 and 0 < (step - before) / rate < elapsed, (rates, elapsed)
    assert max(value for _, value in rates) > 0
    assert max(value for _, value in found["psflow/examples_per_sec"]) > 0
    losses = [value for _, value in found["psflow/loss"]]
    assert all(math.isfinite(value) and value > 0 for value in losses), losses
    # The script's own summary, in the same run: its first loss is the untrained model's.
    script_losses = [value for _, value in found["script_loss"]]
    assert len(script_losses) >= 2 and losses[-1] < script_losses[0] / 10, \
        (losses, script_losses)
    assert len(list(checkpoint_dir.glob("events.out.tfevents.*"))) == 2
