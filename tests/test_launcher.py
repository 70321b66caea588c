"""The `launch` command: its CLI, its output, and whole jobs of real processes on localhost
(the real parameter server, and stand-in workers from tests/launcher_scripts that register and
report done over gRPC), checking how each job ends and that nothing it started is left."""

import io
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from psflow.launcher import cli
from psflow.launcher.job import run_job
from psflow.launcher.job_spec import JobSpec
from psflow.launcher.output import CLEAR_LINE, Output
from psflow.launcher.process import describe_exit
from psflow.launcher.progress import Window, format_progress
from psflow.launcher.resources import available_cores, math_thread_env
from psflow.proto import psflow_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "launcher_scripts"
FAKE_WORKER = SCRIPTS / "fake_worker.py"
BROKEN_PS = SCRIPTS / "broken_ps.py"
JOB_TIMEOUT_S = 60


# -- helpers ------------------------------------------------------------------------------------
def launcher_command(*args):
    return [sys.executable, "-m", "psflow.launcher", *map(str, args)]


def job_env(tmp_path):
    """The launcher's environment, with a TMPDIR of its own to check that it cleans up."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir(exist_ok=True)
    return dict(os.environ, TMPDIR=str(tmpdir))


def run_launch(tmp_path, *args):
    return subprocess.run(launcher_command(*args), capture_output=True, text=True,
                          timeout=JOB_TIMEOUT_S, cwd=ROOT, env=job_env(tmp_path))


def explain(result):
    return f"exit {result.returncode}\nstdout:\n{result.stdout[-4000:]}\n" \
           f"stderr:\n{result.stderr[-4000:]}"


def started_pids(launcher_stderr):
    """{"ps 0": pid, "worker 1": pid, ...} from the launcher's `started` lines."""
    return {name: int(pid) for name, pid in
            re.findall(r"^\[launch\] started (\w+ \d+) \(pid (\d+)\)$", launcher_stderr, re.M)}


def ps_addresses(launcher_stderr):
    found = dict(re.findall(r"^\[launch\] ps (\d+) serving on (\S+)", launcher_stderr, re.M))
    return [found[str(i)] for i in range(len(found))]


def worker_records(out_dir):
    return {int(p.stem.split("-")[1]): json.loads(p.read_text())
            for p in Path(out_dir).glob("worker-*.json")}


def alive(pid):
    """True while `pid` runs; a zombie (exited, not yet reaped by its new parent) is gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def can_listen(port):
    """True if a server could listen on the port now (with SO_REUSEADDR, as servers do, so
    connections in TIME_WAIT do not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
    return True


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def assert_nothing_left(pids, ports=(), tmp_path=None):
    left = {name: pid for name, pid in pids.items() if alive(pid)}
    assert not left, f"still running after launch returned: {left}"
    for port in ports:
        assert can_listen(port), f"port {port} is still taken"
    if tmp_path is not None:
        assert os.listdir(tmp_path / "tmpdir") == [], "the launcher's temp dir was not removed"


def all_pids(launcher_stderr, out_dir):
    pids = started_pids(launcher_stderr)
    for i, record in worker_records(out_dir).items():
        pids[f"worker {i} (own record)"] = record["pid"]
        if "grandchild_pid" in record:
            pids[f"process started by worker {i}"] = record["grandchild_pid"]
    return pids


class LaunchInBackground:
    """`launch` running in the background, its output going to files."""

    def __init__(self, tmp_path, *args):
        self.out_path, self.err_path = tmp_path / "launch.out", tmp_path / "launch.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.process = subprocess.Popen(launcher_command(*args), stdout=out, stderr=err,
                                            cwd=ROOT, env=job_env(tmp_path))

    @property
    def stderr(self):
        return self.err_path.read_text()

    @property
    def stdout(self):
        return self.out_path.read_text()

    def wait_for_ready_workers(self, out_dir, count):
        def ready():
            if self.process.poll() is not None:
                raise AssertionError(f"launch exited early ({self.process.returncode}):\n"
                                     f"{self.stderr}")
            return len(list(Path(out_dir).glob("worker-*.ready"))) == count
        wait_until(ready, 30, f"{count} workers to register")

    def wait(self):
        try:
            return self.process.wait(timeout=JOB_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def explain(self):
        return f"exit {self.process.returncode}\nstdout:\n{self.stdout[-4000:]}\n" \
               f"stderr:\n{self.stderr[-4000:]}"


@pytest.fixture
def out_dir(tmp_path):
    path = tmp_path / "out"
    path.mkdir()
    return path


# -- the command line ---------------------------------------------------------------------------
@pytest.mark.parametrize("args, problem", [
    (["--workers", "0", "--ps", "1", "SCRIPT"], "argument --workers: must be at least 1, got 0"),
    (["--workers", "two", "--ps", "1", "SCRIPT"], "argument --workers: must be a whole number"),
    (["--workers", "1", "--ps", "0", "SCRIPT"], "argument --ps: must be at least 1, got 0"),
    (["--workers", "1", "SCRIPT"], "required: --ps"),
    (["--workers", "1", "--ps", "1"], "required: script"),
    (["--workers", "1", "--ps", "1", "no/such/script.py"], "script not found: no/such/script.py"),
    (["--workers", "1", "--ps", "1", "DIRECTORY"], "not a runnable script"),
    (["--workers", "1", "--ps", "1", "--ps-port", "-1", "SCRIPT"],
     "argument --ps-port: must be a port number from 0 to 65535, got -1"),
    (["--workers", "1", "--ps", "1", "--ps-port", "70000", "SCRIPT"],
     "argument --ps-port: must be a port number from 0 to 65535, got 70000"),
    (["--workers", "1", "--ps", "3", "--ps-port", "65534", "SCRIPT"], "go past 65535"),
    (["--workers", "1", "--ps", "1", "--grace-period", "0", "SCRIPT"],
     "argument --grace-period: must be more than 0 seconds, got 0"),
    (["--workers", "1", "--ps", "1", "--grace-period", "-2", "SCRIPT"],
     "argument --grace-period: must be more than 0 seconds, got -2"),
    (["--workers", "1", "--ps", "1", "--grace-period", "nan", "SCRIPT"],
     "argument --grace-period: must be more than 0 seconds"),
    (["--workers", "1", "--ps", "1", "--mode", "bsp", "SCRIPT"], "invalid choice: 'bsp'"),
    (["--workers", "1", "--ps", "1", "--max-restarts", "-1", "SCRIPT"],
     "argument --max-restarts: must be at least 0, got -1"),
    (["--workers", "2", "--ps", "1", "--staleness", "2", "SCRIPT"],
     "--staleness applies to --mode ssp"),
    (["--workers", "2", "--ps", "1", "--mode", "ssp", "--staleness", "-1", "SCRIPT"],
     "argument --staleness: must be at least 0, got -1"),
    (["--workers", "2", "--ps", "1", "--mode", "ssp", "--replicas-to-aggregate", "1", "SCRIPT"],
     "--replicas-to-aggregate applies to --mode sync"),
    (["--workers", "2", "--ps", "1", "--mode", "sync", "--replicas-to-aggregate", "3", "SCRIPT"],
     "replicas_to_aggregate (3) is more than the 2 workers"),
    (["--workers", "1", "--ps", "1", "--serving-replicas", "-1", "SCRIPT"],
     "argument --serving-replicas: must be at least 0, got -1"),
    (["--workers", "1", "--ps", "1", "--serving-replicas", "2", "--script-ps", "SCRIPT"],
     "does not go with --script-ps"),
    (["--workers", "1", "--ps", "1", "--serving-replicas", "2", "--k8s", "SCRIPT"],
     "psflow-serve --k8s --follow"),
])
def test_bad_input_is_one_line_naming_the_problem_and_exit_2(args, problem, capsys,
                                                             monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "run_job", lambda spec: pytest.fail("a job was started"))
    args = [str(FAKE_WORKER) if a == "SCRIPT" else str(tmp_path) if a == "DIRECTORY" else a
            for a in args]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("launch: error: "), err
    assert problem in err


@pytest.mark.parametrize("entry_point", ["module", "console script"])
def test_entry_points_reject_bad_input_before_starting_anything(entry_point, tmp_path):
    if entry_point == "module":
        command = launcher_command("--workers", "2", "--ps", "1", tmp_path / "missing.py")
    else:
        script = Path(sys.executable).parent / "launch"
        if not script.exists():
            pytest.skip("the `launch` console script is not installed next to this Python")
        command = [str(script), "--workers", "2", "--ps", "1", str(tmp_path / "missing.py")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode == 2, explain(result)
    assert result.stderr == f"launch: error: script not found: {tmp_path / 'missing.py'} " \
                            "(see launch --help)\n"
    assert result.stdout == ""


def test_everything_after_the_script_goes_to_the_script():
    spec = cli.parse_args(["--workers", "2", "--ps", "3", "--ps-port", "5000", str(FAKE_WORKER),
                           "--workers", "9", "--no-progress", "-h", "data.csv"])
    assert (spec.workers, spec.ps, spec.ps_port, spec.mode) == (2, 3, 5000, "async")
    assert spec.progress and spec.grace_period == 5.0
    assert spec.script == str(FAKE_WORKER)
    assert spec.script_args == ["--workers", "9", "--no-progress", "-h", "data.csv"]


def test_run_job_rejects_an_invalid_spec():
    with pytest.raises(ValueError, match="at least 1 worker"):
        run_job(JobSpec(script=str(FAKE_WORKER), workers=0))
    with pytest.raises(ValueError, match="unknown training mode 'bsp'"):
        run_job(JobSpec(script=str(FAKE_WORKER), mode="bsp"))
    with pytest.raises(ValueError, match="staleness applies to mode ssp, not sync"):
        run_job(JobSpec(script=str(FAKE_WORKER), mode="sync", staleness=1))


# -- output and progress (no processes) ---------------------------------------------------------
class FakeTerminal(io.TextIOWrapper):
    """A text stream, like sys.stderr, that says it is a terminal."""

    def __init__(self):
        super().__init__(io.BytesIO(), encoding="utf-8")

    def isatty(self):
        return True


def test_child_lines_get_their_prefix_and_stay_whole():
    out, err = io.StringIO(), io.StringIO()
    output = Output(out, err)
    output.pump("worker:1", io.BytesIO(b"first\nsecond\r\n\xffbad byte\nno newline"), False)
    output.pump("ps:0", io.BytesIO(b"log line\n"), True)
    output.error("worker 1 failed")
    assert out.getvalue() == "[worker:1] first\n[worker:1] second\n[worker:1] \ufffdbad byte\n" \
                             "[worker:1] no newline\n"
    assert err.getvalue() == "[ps:0] log line\nlaunch: worker 1 failed\n"


def test_progress_line_on_a_terminal_is_cleared_and_redrawn_around_child_lines():
    out = io.StringIO()
    terminal = FakeTerminal()
    output = Output(out, terminal)
    output.status("step 5 | loss 0.5")
    output.pump("ps:0", io.BytesIO(b"a log line\n"), True)
    output.clear_status()
    assert terminal.buffer.getvalue().decode() == (
        f"{CLEAR_LINE}step 5 | loss 0.5"
        f"{CLEAR_LINE}[ps:0] a log line\nstep 5 | loss 0.5"
        f"{CLEAR_LINE}")


def test_progress_off_a_terminal_is_a_launch_line():
    err = io.StringIO()
    Output(io.StringIO(), err).status("step 5")
    assert err.getvalue() == "[launch] step 5\n"


def test_format_progress_averages_the_reported_losses():
    stats = pb.StatsResponse(global_step=120, workers=[
        pb.WorkerStats(task_index=0, loss=0.5, local_step=60),
        pb.WorkerStats(task_index=1, loss=0.25, local_step=60, done=True),
        pb.WorkerStats(task_index=2, loss=math.nan)])
    assert format_progress(stats, 35.25) == \
        "step 120 | 35.2 steps/s | loss 0.375 | 1/3 workers done"
    no_loss = pb.StatsResponse(global_step=0, workers=[pb.WorkerStats(loss=math.nan)])
    assert format_progress(no_loss) == "step 0 | 0/1 workers done"


def test_rates_are_measured_over_a_window():
    window = Window(window=5.0)
    assert window.add(100.0, 0) == (100.0, 0)
    assert window.add(101.0, 10) == (100.0, 0)
    for t in range(102, 110):
        window.add(float(t), 10 * (t - 100))
    first_when, first = window.add(110.0, 200)
    assert (200 - first) / (110.0 - first_when) == pytest.approx((200 - 50) / 5.0)


def test_math_threads_are_capped_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    env = math_thread_env(1)
    assert env["OPENBLAS_NUM_THREADS"] == "1" and env["MKL_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in env  # the user's own choice stays


def test_exits_are_described_in_words():
    assert describe_exit(3) == "failed with exit code 3"
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"
    assert describe_exit(0) == "exited with code 0"


# -- whole jobs ----------------------------------------------------------------------------------
@pytest.mark.cluster
def test_successful_job_ends_with_everything_gone(tmp_path, out_dir):
    job = LaunchInBackground(tmp_path, "--workers", 2, "--ps", 2, FAKE_WORKER, out_dir,
                             "--steps", 40, "--workers", 9)
    code = job.wait()
    assert code == 0, job.explain()
    stdout, stderr = job.stdout, job.stderr

    # Every line carries its source; child stdout and stderr stay apart.
    for line in stdout.splitlines():
        assert re.match(r"\[worker:[01]\] ", line), line
    for line in stderr.splitlines():
        assert re.match(r"(\[(worker:[01]|ps:[01]|launch)\] |launch: )", line), line
    for i in range(2):
        assert f"[worker:{i}] hello from worker {i}" in stdout.splitlines()
        assert f"[worker:{i}] worker {i} done" in stdout.splitlines()
        assert f"[worker:{i}] a line on stderr from worker {i}" in stderr.splitlines()

    # Progress: the global step and the workers' loss, read from shard 0.
    progress = re.findall(r"^\[launch\] step (\d+) \| .*loss ([0-9.e-]+)", stderr, re.M)
    assert progress and int(progress[-1][0]) > 0, stderr
    summary = [line for line in stderr.splitlines() if "job finished" in line]
    assert len(summary) == 1, stderr
    assert "2 workers succeeded, 2 of 2 parameter servers exited by themselves" in summary[0]
    steps = re.search(r"global step (\d+)", summary[0])
    if steps:  # shard 0 answered the final poll
        assert int(steps.group(1)) == 2 * 40
    assert "launch:" not in stderr  # no failure, no warning

    # Each worker saw a valid TF_CONFIG with its index and the PS the launcher started.
    addresses = ps_addresses(stderr)
    assert len(addresses) == 2 and all(a.startswith("127.0.0.1:") for a in addresses)
    records = worker_records(out_dir)
    assert sorted(records) == [0, 1]
    for i, record in records.items():
        config = json.loads(record["tf_config"])
        assert config == {"cluster": {"ps": addresses, "worker": ["127.0.0.1:0"] * 2},
                          "task": {"type": "worker", "index": i}}
        # Two workers share the machine's cores: each gets its share of BLAS threads.
        threads = os.environ.get("OPENBLAS_NUM_THREADS") or str(max(1, available_cores() // 2))
        assert record["env"] == {"PSFLOW_PARENT_PID": str(job.process.pid),
                                 "PSFLOW_MODE": "async", "PYTHONUNBUFFERED": "1",
                                 "OPENBLAS_NUM_THREADS": threads}
        assert record["argv"] == [str(out_dir), "--steps", "40", "--workers", "9"]

    pids = all_pids(stderr, out_dir)
    assert len(pids) == 6
    assert_nothing_left(pids, [port_of(a) for a in addresses], tmp_path)


@pytest.mark.cluster
def test_progress_on_a_terminal_is_one_line_redrawn_in_place(tmp_path, out_dir):
    import pty
    import threading

    controller, terminal = pty.openpty()
    captured = bytearray()

    def read_terminal():
        while True:
            try:
                data = os.read(controller, 65536)
            except OSError:  # the other side is closed
                return
            if not data:
                return
            captured.extend(data)
    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    with open(tmp_path / "launch.out", "wb") as out:
        process = subprocess.Popen(launcher_command("--workers", 2, "--ps", 1, FAKE_WORKER,
                                                    out_dir, "--steps", 60),
                                   stdout=out, stderr=terminal, cwd=ROOT, env=job_env(tmp_path))
    os.close(terminal)
    assert process.wait(timeout=JOB_TIMEOUT_S) == 0, captured.decode(errors="replace")
    reader.join(timeout=5)
    text = captured.decode(errors="replace")
    redraws = re.findall(r"\r\x1b\[Kstep (\d+) \| ([0-9.]+) steps/s \| loss [0-9.e-]+", text)
    assert redraws and float(redraws[-1][1]) > 0, text
    assert "[launch] step" not in text  # no progress lines: the one line is redrawn
    # Lines written while the progress line shows start on a cleared line.
    for i in range(2):
        assert re.search(rf"\r\x1b\[K\[worker:{i}\] worker {i} finished its steps\r\n"
                         r"step \d+ \|", text), text
    # The summary comes last, on a cleared line, and no progress line is left behind.
    assert re.search(r"\r\x1b\[K\[launch\] job finished [^\r\n]*\r\n$", text), text


@pytest.mark.cluster
@pytest.mark.parametrize("fail_code, message", [
    ("3", "launch: worker 1 failed with exit code 3; stopping the job"),
    ("kill", "launch: worker 1 was killed by SIGKILL; stopping the job"),
])
def test_failing_worker_stops_the_job_and_is_named(fail_code, message, tmp_path, out_dir):
    result = run_launch(tmp_path, "--workers", 2, "--ps", 2, "--no-progress",
                        "--max-restarts", 1, FAKE_WORKER, out_dir, "--fail-index", 1,
                        "--fail-code", fail_code, "--hang", "--spawn")
    assert result.returncode == 1, explain(result)
    # Restarted once, it fails again: then the job stops.
    first = message.replace("stopping the job", "restarting it")
    assert first in result.stderr.splitlines(), explain(result)
    assert "restart 1 of 1" in result.stderr, explain(result)
    assert message in result.stderr.splitlines(), explain(result)
    assert "[worker:1] worker 1 fails now" in result.stderr.splitlines()
    assert (out_dir / "worker-0.sigterm").exists()  # stopped gracefully first
    pids = all_pids(result.stderr, out_dir)
    assert len(pids) == 8, explain(result)  # 2 PS, 2 workers (twice), what they started
    addresses = ps_addresses(result.stderr)
    assert_nothing_left(pids, [port_of(a) for a in addresses], tmp_path)


@pytest.mark.cluster
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stop_signal_tears_the_job_down(signum, code, tmp_path, out_dir):
    extra = ["--ignore-sigterm"] if signum == signal.SIGINT else []
    job = LaunchInBackground(tmp_path, "--workers", 2, "--ps", 2, "--grace-period", 1,
                             FAKE_WORKER, out_dir, "--hang", "--spawn", *extra)
    job.wait_for_ready_workers(out_dir, 2)
    job.process.send_signal(signum)
    assert job.wait() == code, job.explain()
    lines = job.stderr.splitlines()
    assert f"launch: received {signal.Signals(signum).name}; stopping the job" in lines
    for i in range(2):
        if extra:  # workers that ignore SIGTERM are killed after the grace period
            assert f"launch: worker {i} still running 1 s after SIGTERM; killing it" in lines
        else:
            assert (out_dir / f"worker-{i}.sigterm").exists()
    pids = all_pids(job.stderr, out_dir)
    assert len(pids) == 8, job.explain()
    assert_nothing_left(pids, [port_of(a) for a in ps_addresses(job.stderr)], tmp_path)


@pytest.mark.cluster
def test_killed_launcher_leaves_no_process_behind(tmp_path, out_dir):
    job = LaunchInBackground(tmp_path, "--workers", 2, "--ps", 2, "--no-progress",
                             FAKE_WORKER, out_dir, "--hang")
    job.wait_for_ready_workers(out_dir, 2)
    pids = all_pids(job.stderr, out_dir)
    assert len(pids) == 6 and all(alive(pid) for pid in pids.values()), job.explain()
    job.process.kill()
    job.wait()
    # The PS notice through --parent-pid, the workers through PSFLOW_PARENT_PID.
    wait_until(lambda: not any(alive(pid) for pid in pids.values()), 10,
               f"the children of a killed launcher to exit: "
               f"{ {n: p for n, p in pids.items() if alive(p)} }")
    for address in ps_addresses(job.stderr):
        wait_until(lambda a=address: can_listen(port_of(a)), 5, f"{address} to be free")


@pytest.mark.cluster
def test_sigkilled_launcher_leaves_no_grandchild_nor_a_worker_without_a_session(tmp_path,
                                                                               out_dir):
    """Workers that never create a psflow session, ignore SIGTERM and start processes of
    their own: a SIGKILL of the launcher still takes every one of them down, and its job
    folder."""
    job = LaunchInBackground(tmp_path, "--workers", 2, "--ps", 1, "--no-progress",
                             SCRIPTS / "sleeper.py", out_dir)
    wait_until(lambda: len(list(out_dir.glob("sleeper-*.json"))) == 2, 30, "the workers")
    pids = started_pids(job.stderr)
    for path in out_dir.glob("sleeper-*.json"):
        record = json.loads(path.read_text())
        pids[f"worker pid {record['pid']}"] = record["pid"]
        pids[f"process started by {record['pid']}"] = record["grandchild_pid"]
    assert len(pids) == 7 and all(alive(pid) for pid in pids.values()), pids
    job.process.kill()
    job.wait()
    wait_until(lambda: not any(alive(pid) for pid in pids.values()), 5,
               f"the processes of a killed launcher to end: "
               f"{ {n: p for n, p in pids.items() if alive(p)} }")
    wait_until(lambda: os.listdir(tmp_path / "tmpdir") == [], 5, "the job folder to go")


def test_a_launch_removes_job_folders_whose_launcher_is_gone(tmp_path):
    from psflow.launcher.job_folders import remove_leftovers
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = tmp_path / f"psflow-launch-{gone.pid}-abc"
    live = tmp_path / f"psflow-launch-{os.getpid()}-def"
    other = tmp_path / "psflow-launch-xyz"
    for folder in (stale, live, other):
        folder.mkdir()
        (folder / "ps-0.port").write_text("1234\n")
    assert remove_leftovers(str(tmp_path)) == [str(stale)]
    assert not stale.exists() and live.exists() and other.exists()


@pytest.mark.cluster
def test_ps_dying_mid_job_stops_the_job_and_is_named(tmp_path, out_dir):
    job = LaunchInBackground(tmp_path, "--workers", 2, "--ps", 2, "--no-progress",
                             "--max-restarts", 0, FAKE_WORKER, out_dir, "--hang")
    job.wait_for_ready_workers(out_dir, 2)
    os.kill(started_pids(job.stderr)["ps 1"], signal.SIGKILL)
    assert job.wait() == 1, job.explain()
    assert "launch: ps 1 was killed by SIGKILL while the workers were running; stopping the " \
           "job" in job.stderr.splitlines(), job.explain()
    assert_nothing_left(all_pids(job.stderr, out_dir), tmp_path=tmp_path)


@pytest.mark.cluster
def test_taken_ps_port_falls_back_and_workers_get_the_actual_port(tmp_path, out_dir):
    # A listening socket on `base`, and `base + 1` free, so that PS 0 must fall back and
    # PS 1 gets the port it asks for.
    for _ in range(20):
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        base = taken.getsockname()[1]
        if base < 65535 and can_listen(base + 1):
            break
        taken.close()
    else:
        pytest.fail("found no free port pair")
    with taken:
        result = run_launch(tmp_path, "--workers", 2, "--ps", 2, "--ps-port", base,
                            "--no-progress", FAKE_WORKER, out_dir)
        assert result.returncode == 0, explain(result)
        addresses = ps_addresses(result.stderr)
        assert port_of(addresses[0]) != base
        assert f"[launch] ps 0 serving on {addresses[0]} (port {base} was taken)" in \
            result.stderr.splitlines()
        assert addresses[1] == f"127.0.0.1:{base + 1}"
        for record in worker_records(out_dir).values():  # they registered there, too
            assert json.loads(record["tf_config"])["cluster"]["ps"] == addresses
        assert_nothing_left(all_pids(result.stderr, out_dir),
                            [port_of(a) for a in addresses], tmp_path)


# -- in-process run_job, with a stand-in PS -----------------------------------------------------
@pytest.fixture
def private_tempdir(tmp_path, monkeypatch):
    import tempfile
    path = tmp_path / "tmpdir"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


def run_in_process(**spec):
    out, err = io.StringIO(), io.StringIO()
    code = run_job(JobSpec(progress=False, **spec), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.cluster
def test_ps_that_exits_before_reporting_its_port_stops_the_launch(private_tempdir, out_dir):
    code, _, err = run_in_process(script=str(FAKE_WORKER), script_args=[str(out_dir)],
                                  workers=2, ps=1, ps_command=[sys.executable, str(BROKEN_PS)])
    assert code == 1, err
    lines = err.splitlines()
    assert "[ps:0] broken ps: cannot start" in lines
    assert "launch: ps 0 failed with exit code 4 before reporting its port; stopping the job" \
        in lines
    assert not any("worker" in line for line in lines), err  # no worker was started
    assert list(out_dir.iterdir()) == []
    assert_nothing_left(started_pids(err))
    assert os.listdir(private_tempdir) == []


@pytest.mark.cluster
def test_ps_that_never_reports_a_port_times_out(private_tempdir, out_dir):
    started = time.monotonic()
    code, _, err = run_in_process(script=str(FAKE_WORKER), script_args=[str(out_dir)],
                                  workers=1, ps=1, ps_start_timeout=1.0, grace_period=1.0,
                                  ps_command=[sys.executable, str(BROKEN_PS), "--hang"])
    assert code == 1, err
    assert "launch: ps 0 did not report a port within 1 s; stopping the job" in err.splitlines()
    assert time.monotonic() - started < 10
    pids = started_pids(err)
    assert list(pids) == ["ps 0"]
    assert_nothing_left(pids)
    assert os.listdir(private_tempdir) == []


@pytest.mark.cluster
def test_ps_still_running_after_the_workers_is_stopped_and_named(private_tempdir, out_dir):
    # Workers that exit 0 without reporting done leave the PS waiting for them.
    code, out, err = run_in_process(script=str(FAKE_WORKER),
                                    script_args=[str(out_dir), "--skip-done"],
                                    workers=2, ps=1, ps_exit_timeout=1.0)
    assert code == 0, err
    assert "launch: warning: ps 0 still running 1 s after every worker finished; stopping it" \
        in err.splitlines()
    assert "2 workers succeeded, 0 of 1 parameter servers exited by themselves" in err
    assert "[worker:1] worker 1 done" in out.splitlines()
    assert_nothing_left(all_pids(err, out_dir))
    assert os.listdir(private_tempdir) == []


@pytest.mark.cluster
def test_a_serving_tier_follows_the_job_and_a_killed_replica_comes_back(tmp_path):
    import numpy as np

    from psflow.serving.remote_params import RemoteParams
    stop = tmp_path / "stop"
    token = "tier-test-token"
    launcher = subprocess.Popen(
        launcher_command("--no-progress", "--workers", 1, "--ps", 2, "--serving-replicas", 2,
                         ROOT / "tests" / "cluster_scripts" / "table_until_told.py", stop),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env=dict(job_env(tmp_path), PSFLOW_AUTH_TOKEN=token))
    lines = []
    try:
        line = ""
        while "serving tier:" not in line:
            line = launcher.stdout.readline()
            assert line, "the launcher ended before printing the tier:\n" + "".join(lines)
            lines.append(line)
        shards = [flag.split("=", 1)[1].split(",") for flag in line.split()
                  if flag.startswith("--params_shard=")]
        assert len(shards) == 2 and all(len(replicas) == 2 for replicas in shards)
        pid = int(re.search(r"started params 0\.0 \(pid (\d+)\)", "".join(lines)).group(1))
        tier = RemoteParams(shards, token=token, cache_ttl=0, deadline=2.0)
        keys = np.arange(1, 21)
        wait_until(lambda: _answers(tier, keys), 30, "the tier to hold the trained rows")
        first = tier.lookup("items", keys)
        wait_until(lambda: not np.array_equal(tier.lookup("items", keys), first), 30,
                   "the rows to move on as the job trains")
        os.kill(pid, signal.SIGKILL)
        assert tier.lookup("items", keys).any()  # the other replica of shard 0 answers
        alone = RemoteParams([[shards[0][0]], [shards[1][0]]], token=token, cache_ttl=0,
                             deadline=2.0)
        wait_until(lambda: _answers(alone, keys), 30, "the killed replica to serve again")
        tier.close()
        alone.close()
    finally:
        stop.touch()
        out, _ = launcher.communicate(timeout=JOB_TIMEOUT_S)
        lines.append(out)
    text = "".join(lines)
    assert launcher.returncode == 0, text
    assert re.search(r"params 0\.0 was killed by SIGKILL; starting it again on port "
                     + shards[0][0].rsplit(":", 1)[1], text), text
    pids = [int(p) for p in re.findall(r"started params \d\.\d \(pid (\d+)\)", text)]
    assert len(pids) == 5
    wait_until(lambda: not any(alive(p) for p in pids), 10, "the tier to be gone")


def _answers(params, keys):
    try:
        rows = params.lookup("items", keys)
    except Exception:  # noqa: BLE001 -- not serving yet
        return False
    return rows is not None and rows.any()
