"""`launch --online`: whole jobs on localhost training on a followed directory. A stop (SIGTERM)
gives a final checkpoint and exit 0; a job restarted from it trains on every line exactly once
across the two runs; a worker killed is restarted (after a backoff) and resumes where its
applied pushes left off. Also the CLI's online options and the backoff."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import psflow
from psflow.launcher import cli
from psflow.launcher.online import BACKOFF_MAX_S, restart_delay

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve().parent / "cluster_scripts" / "online_counts.py"


def ship(directory, name, ids):
    """A file of ids, one a line, written aside and renamed in as a log shipper does."""
    tmp = directory / f".{name}.tmp"
    tmp.write_text("".join(f"{i}\n" for i in ids))
    os.rename(tmp, directory / name)


def command(tmp_path, *script_args, workers=2):
    return [sys.executable, "-m", "psflow.launcher", "--no-progress", "--online", "--workers",
            str(workers), "--ps", "2", "--checkpoint-root", str(tmp_path), str(SCRIPT),
            "--data", str(tmp_path / "data"), "--checkpoint-dir", str(tmp_path / "ckpt"),
            *map(str, script_args)]


def explain(code, out, err):
    return f"exit {code}\nstdout:\n{out[-4000:]}\nstderr:\n{err[-4000:]}"


def counts(tmp_path):
    return psflow.load_model(str(tmp_path / "ckpt"))["counts"]


def run(tmp_path, *script_args, timeout=120):
    result = subprocess.run(command(tmp_path, *script_args), capture_output=True, text=True,
                            timeout=timeout, cwd=ROOT)
    return result.returncode, result.stdout, result.stderr


@pytest.mark.cluster
def test_a_stop_checkpoints_and_a_restart_trains_on_every_line_once(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for k in range(8):
        ship(data, f"part-{k:03d}.csv", range(10 * k, 10 * k + 10))
    process = subprocess.Popen(command(tmp_path, "--step-sleep", 0.05), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "ckpt" / "checkpoint").exists():
            assert process.poll() is None and time.monotonic() < deadline, \
                explain(process.returncode, *process.communicate())
            time.sleep(0.05)
        ship(data, "part-008.csv", range(80, 90))  # appears while the job reads
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, explain(process.returncode, out, err)
    assert "the chief wrote its final checkpoint" in out + err
    first = counts(tmp_path)
    consumed = int(-first.sum())
    assert set(np.unique(first)) <= {0.0, -1.0}, first
    assert 0 < consumed < 90, consumed  # stopped mid-stream
    index = psflow.checkpoint.read_index(psflow.checkpoint.latest(str(tmp_path / "ckpt")))
    assert {p["shard"] for p in index["input_positions"]} <= {0, 1}
    # More files, and a second run from the checkpoint that ends once no file comes for 2 s.
    ship(data, "part-009.csv", range(90, 100))
    ship(data, "part-010.csv", range(100, 110))
    code, out, err = run(tmp_path, "--idle-timeout", 2)
    assert code == 0, explain(code, out, err)
    final = counts(tmp_path)
    np.testing.assert_array_equal(final[:110], -1.0)  # every line once, across the two runs
    np.testing.assert_array_equal(final[110:], 0.0)


@pytest.mark.cluster
def test_a_killed_worker_is_restarted_and_resumes_after_its_applied_pushes(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for k in range(6):
        ship(data, f"part-{k:03d}.csv", range(10 * k, 10 * k + 10))
    code, out, err = run(tmp_path, "--idle-timeout", 2, "--kill-once", tmp_path / "killed")
    assert code == 0, explain(code, out, err)
    assert (tmp_path / "killed").exists()
    assert "worker 1 was killed by SIGKILL; restarting it in 1 s (online job)" in out + err, \
        explain(code, out, err)
    final = counts(tmp_path)
    np.testing.assert_array_equal(final[:60], -1.0)
    np.testing.assert_array_equal(final[60:], 0.0)


def test_online_options():
    spec = cli.parse_args(["--workers", "2", "--ps", "1", "--online", str(SCRIPT)])
    assert spec.online and spec.idle_timeout == 0 and spec.stop_timeout == 120
    assert spec.export_env() == {"PSFLOW_ONLINE": "1"}
    spec = cli.parse_args(["--workers", "2", "--ps", "1", "--online", "--idle-timeout", "30",
                           "--stop-timeout", "9", str(SCRIPT)])
    assert spec.idle_timeout == 30 and spec.stop_timeout == 9
    assert cli.parse_args(["--workers", "1", "--ps", "1", str(SCRIPT)]).idle_timeout == 600


def test_online_does_not_go_with_script_ps(capsys):
    with pytest.raises(SystemExit) as caught:
        cli.parse_args(["--workers", "1", "--ps", "1", "--online", "--script-ps", str(SCRIPT)])
    assert caught.value.code == 2
    assert "--online runs psflow's own parameter servers" in capsys.readouterr().err


def test_the_restart_backoff_doubles_to_its_bound():
    assert [restart_delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert restart_delay(30) == BACKOFF_MAX_S


@pytest.mark.cluster
def test_a_killed_parameter_server_is_restarted_restored_and_the_job_stops_cleanly(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for k in range(20):
        ship(data, f"part-{k:03d}.csv", range(10 * k, 10 * k + 10))
    log = tmp_path / "launch.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command(tmp_path, "--step-sleep", 0.1), stdout=out,
                                   stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "ckpt" / "checkpoint").exists():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        # shard 0 holds the variable, the global step and the input positions
        ps_0 = int(re.search(r"started ps 0 \(pid (\d+)\)", log.read_text()).group(1))
        os.kill(ps_0, signal.SIGKILL)
        while "restored parameter server(s) 0" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        time.sleep(0.5)  # training goes on
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text()
    assert process.returncode == 0, text
    assert "ps 0 was killed by SIGKILL; restarting it (online job)" in text
    assert "worker 1 failed" not in text  # it waited for the chief's restore, and went on
    assert "the chief wrote its final checkpoint" in text
    assert set(np.unique(counts(tmp_path))) <= {0.0, -1.0}
