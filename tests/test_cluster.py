"""Whole jobs on localhost through `launch`: real PS and worker processes, final values."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import psflow

pytestmark = pytest.mark.cluster  # every test runs a job under launch

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "cluster_scripts"


def launch(*args, timeout=180):
    """Runs `python -m psflow.launcher --no-progress ARGS` and returns the finished process."""
    result = subprocess.run([sys.executable, "-m", "psflow.launcher", "--no-progress",
                             *map(str, args)],
                            capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return result


def explain(result):
    return f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n" \
           f"{result.stderr[-3000:]}"


def test_linear_regression_converges_with_two_ps_and_two_workers(tmp_path):
    out = tmp_path / "result.json"
    result = launch("--workers", "2", "--ps", "2", str(SCRIPTS / "linear_regression.py"),
                    str(out))
    assert result.returncode == 0, explain(result)
    final = json.loads(out.read_text())
    np.testing.assert_allclose(final["w"], [2.0, -3.0, 0.5], atol=1e-3)
    np.testing.assert_allclose(final["b"], [4.0], atol=1e-3)
    assert final["step"] >= 600


def test_no_update_is_lost_with_eight_async_workers(tmp_path):
    out = tmp_path / "result.json"
    result = launch("--workers", "8", "--ps", "1", str(SCRIPTS / "constant_pushes.py"),
                    str(out))
    assert result.returncode == 0, explain(result)
    final = json.loads(out.read_text())
    assert final["step"] == 8 * 200
    assert final["v"] == [-1600.0] * 4


@pytest.mark.parametrize("num_ps", [1, 2])
def test_digits_reaches_95_percent_with_two_workers(num_ps):
    result = launch("--workers", "2", "--ps", str(num_ps), str(ROOT / "examples" / "digits.py"))
    assert result.returncode == 0, explain(result)
    lines = [line for line in result.stdout.splitlines()
             if line.startswith("[worker:0]") and "test accuracy:" in line]
    assert lines, explain(result)
    accuracy = float(lines[-1].rsplit(":", 1)[1])
    assert accuracy >= 0.95, explain(result)


def finished_workers(result):
    """{worker: its own steps} from the workers' last lines."""
    return {int(m.group(1)): int(m.group(2)) for m in
            re.finditer(r"worker (\d+) finished (\d+) steps", result.stdout)}


def test_a_sync_worker_killed_mid_training_does_not_stop_the_others():
    result = launch("--workers", "3", "--ps", "2", "--mode", "sync", "--max-restarts", "0",
                    str(SCRIPTS / "sync_steps.py"), "--steps", "40", "--die-at", "1:10",
                    timeout=120)
    assert result.returncode == 1, explain(result)
    assert "worker 1 was killed by SIGKILL; the job goes on with the other workers" \
        in result.stderr, explain(result)
    assert "job finished without worker 1" in result.stderr, explain(result)
    assert finished_workers(result) == {0: 40, 2: 40}, explain(result)


@pytest.mark.parametrize("mode", ["sync", "ssp"])
def test_workers_with_different_budgets_all_exit(mode):
    result = launch("--workers", "3", "--ps", "1", "--mode", mode,
                    str(SCRIPTS / "sync_steps.py"), "--steps-by-worker", "5,20,12", timeout=120)
    assert result.returncode == 0, explain(result)
    assert finished_workers(result) == {0: 5, 1: 20, 2: 12}, explain(result)


def start_step(result):
    """The global step a job of resumable.py started from: the least of the steps its workers
    saw before their first push (each reads it before pushing, so whoever pushed first saw
    the start)."""
    steps = [int(s) for s in re.findall(r"\[worker:\d+\] started at global step (\d+)",
                                        result.stdout)]
    assert steps, "no worker printed its start"
    return min(steps)


def test_a_second_launch_resumes_from_the_checkpoint_with_another_ps_count(tmp_path):
    script = str(SCRIPTS / "resumable.py")
    first = launch("--workers", "2", "--ps", "2", "--checkpoint-root", tmp_path, script,
                   "--checkpoint-dir", str(tmp_path),
                   "--last-step", "40")
    assert first.returncode == 0, explain(first)
    assert start_step(first) == 0, explain(first)
    model = psflow.load_model(tmp_path / "model.npz")
    saved_step = int(json.loads((tmp_path / "checkpoint").read_text())["latest"].split("-")[1])
    assert saved_step >= 40
    # Nothing left to train: the model comes back unchanged through one PS instead of two.
    again = launch("--workers", "1", "--ps", "1", "--checkpoint-root", tmp_path, script,
                   "--checkpoint-dir", str(tmp_path),
                   "--last-step", "40")
    assert again.returncode == 0, explain(again)
    assert start_step(again) == saved_step, explain(again)
    assert model["ids/emb/keys"].size > 0 and model["ids/emb/values"].shape[1] == 4
    again_model = psflow.load_model(tmp_path / "model.npz")
    assert sorted(again_model) == sorted(model)
    for name, value in again_model.items():
        np.testing.assert_array_equal(value, model[name])
    # And training goes on from there with three.
    more = launch("--workers", "2", "--ps", "3", "--checkpoint-root", tmp_path, script,
                  "--checkpoint-dir", str(tmp_path),
                  "--last-step", "60")
    assert more.returncode == 0, explain(more)
    assert start_step(more) == saved_step, explain(more)


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_a_killed_worker_is_restarted_and_the_job_finishes(tmp_path, mode):
    result = launch("--workers", "2", "--ps", "2", "--mode", mode,
                    str(SCRIPTS / "sync_steps.py"), "--steps", "30", "--die-at", "1:10",
                    "--die-once", str(tmp_path / "died"), timeout=120)
    assert result.returncode == 0, explain(result)
    assert "worker 1 was killed by SIGKILL; restarting it" in result.stderr, explain(result)
    assert "restart 1 of 3" in result.stderr and "1 worker restart" in result.stderr
    # The restarted worker ran its whole budget again.
    assert finished_workers(result) == {0: 30, 1: 30}, explain(result)


class Job:
    """A `launch` running in the background, its output collected as it comes."""

    def __init__(self, *args):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "psflow.launcher", "--no-progress", *map(str, args)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self.stdout, self.stderr = [], []
        self._readers = [threading.Thread(target=self._read, args=(s, out), daemon=True)
                         for s, out in ((self.process.stdout, self.stdout),
                                        (self.process.stderr, self.stderr))]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, lines):
        for line in stream:
            lines.append(line)

    def wait_for(self, pattern, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.stdout) + list(self.stderr):
                match = re.search(pattern, line)
                if match:
                    return match
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.explain()}")

    def finish(self, timeout=180):
        self.process.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return self.process.returncode

    def explain(self):
        return f"stdout:\n{''.join(self.stdout)[-3000:]}\nstderr:\n{''.join(self.stderr)[-3000:]}"


@pytest.mark.parametrize("mode,ps", [("async", 1), ("sync", 0)])
def test_a_killed_ps_is_restarted_restored_and_the_job_finishes(tmp_path, mode, ps):
    job = Job("--workers", "2", "--ps", "2", "--mode", mode, "--checkpoint-root", tmp_path,
              ROOT / "examples" / "digits.py", "--checkpoint-dir", tmp_path, "--save-steps", "100")
    pid = int(job.wait_for(rf"started ps {ps} \(pid (\d+)\)").group(1))
    job.wait_for(r"\[worker:0\] step 5\d\d:")  # past a few checkpoints
    os.kill(pid, signal.SIGKILL)
    code = job.finish()
    assert code == 0, job.explain()
    stderr = "".join(job.stderr)
    assert f"ps {ps} was killed by SIGKILL while the workers were running; restarting it" \
        in stderr
    restored = re.search(rf"restored parameter server\(s\) {ps} .* at global step (\d+)",
                         stderr)
    assert restored, job.explain()
    steps = [int(s) for s in re.findall(r"\[worker:0\] step (\d+):", "".join(job.stdout))]
    # The global step went back to the checkpoint, never further.
    back = [(a, b) for a, b in zip(steps[:-1], steps[1:], strict=True) if b < a]
    assert all(b >= int(restored.group(1)) for a, b in back), steps
    accuracy = float(re.search(r"test accuracy: ([0-9.]+)", "".join(job.stdout)).group(1))
    assert accuracy >= 0.95, job.explain()


def test_a_killed_ps_without_a_checkpoint_ends_the_job_with_the_reason():
    job = Job("--workers", "2", "--ps", "2", "--max-restarts", "1",
              ROOT / "examples" / "digits.py", "--steps", "100000")
    pid = int(job.wait_for(r"started ps 1 \(pid (\d+)\)").group(1))
    job.wait_for(r"\[worker:0\] step 2\d\d:")
    os.kill(pid, signal.SIGKILL)
    code = job.finish()
    assert code == 1, job.explain()
    assert "no checkpoint to restore them from" in "".join(job.stderr), job.explain()


def test_a_worker_that_leaves_without_joining_is_named_and_does_not_stall_a_sync_job():
    started = time.monotonic()
    result = launch("--workers", "2", "--ps", "1", "--mode", "sync",
                    str(SCRIPTS / "sync_steps.py"), "--steps", "20", "--leave", "1", timeout=120)
    assert result.returncode == 1, explain(result)
    assert "worker 1 exited with code 0 without ever joining the job" in result.stderr, \
        explain(result)
    assert "job finished without worker 1 (it never joined)" in result.stderr
    assert finished_workers(result) == {0: 20}, explain(result)
    assert time.monotonic() - started < 60  # not the 120 s join grace


@pytest.mark.parametrize("hang_at, words", [
    ("1:5", "worker 1 (local step 5: in the script's own code after run"),
    ("1:-1", "worker 1 (never connected to the parameter servers"),
])
def test_a_hung_worker_ends_the_job_within_the_idle_bound_and_is_named(hang_at, words):
    started = time.monotonic()
    result = launch("--workers", "2", "--ps", "1", "--idle-timeout", "4",
                    str(SCRIPTS / "sync_steps.py"), "--steps", "10", "--hang-at", hang_at,
                    timeout=120)
    assert result.returncode == 1, explain(result)
    assert "no step for 4 s from" in result.stderr and words in result.stderr, explain(result)
    assert "worker 0" not in result.stderr.split("no step for")[1], explain(result)
    assert time.monotonic() - started < 40


def test_a_job_past_its_timeout_is_stopped_naming_what_runs():
    result = launch("--workers", "2", "--ps", "1", "--timeout", "5",
                    str(SCRIPTS / "sync_steps.py"), "--steps", "10", "--hang-at", "0:3",
                    timeout=120)
    assert result.returncode == 1, explain(result)
    assert "the job ran past its --timeout of 5 s; still running: worker 0 (local step 3" \
        in result.stderr, explain(result)
