"""Runs a job's processes on this machine and ends the job cleanly.

The parameter servers start first, each on a free loopback port (or the one asked for, when it
is free), and report the port they bound in a file; then the workers start with a `TF_CONFIG`
built from those ports. Every child leads a process group of its own and its output lines are
prefixed with its role (`[worker:1] ...`).

How a job ends:
- every worker exits 0: the parameter servers exit by themselves (every worker reported done);
  one that does not within `ps_exit_timeout` is stopped and named. Exit code 0.
- a worker fails (non-zero exit, or killed by a signal), or a parameter server dies while the
  workers run: the job stops and the process is named. Exit code 1.
- SIGINT, SIGTERM or SIGHUP to the launcher: one stop event; the job stops. Exit code 128 +
  the signal's number (130 for SIGINT, 143 for SIGTERM). A second signal skips the grace period.
Stopping sends SIGTERM to every child's group, then SIGKILL to whatever is left after the
grace period, and reaps every child: nothing the launcher started outlives `run_job`.
If the launcher itself is killed (even with SIGKILL), nothing of the job stays: the kernel
kills each child the instant its parent dies (a parent-death signal set before the child's
program starts), and the job's watchdog process kills every child's whole process group (what
a worker script started itself included) and removes the job's folder. A later launch also
removes folders whose launcher is gone.
"""

import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time

from psflow import monitoring
from psflow.fileio import atomic_write
from psflow.parent import PARENT_ENV, alive
from psflow.transport import auth
from psflow.train.consistency import Consistency

from .output import Output
from .process import Child, Watchdog, describe_exit
from .progress import ProgressPoller, report_worker_done

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# How long the workers get to exit once a parameter server has ended normally (it does so when
# every worker has reported done, so the workers should be on their way out).
WORKERS_AFTER_PS_EXIT_S = 10.0
POLL_S = 0.05
# The job's folder for the PS port files: TMP_PREFIX<launcher pid>-<random>.
TMP_PREFIX = "psflow-launch-"
# In the job's folder (readable by its user alone): the parameter servers' addresses and the
# job's token, so that `launch --status` on this machine finds a running job.
JOB_FILE = "job.json"


def job_folders(folder=None):
    """[(path, whether its launcher is alive)] of the job folders in `folder` (default: the
    temporary folder), by name."""
    folder = folder or tempfile.gettempdir()
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    found = []
    for name in names:
        owner = name[len(TMP_PREFIX):].split("-", 1)[0]
        if name.startswith(TMP_PREFIX) and owner.isdigit():
            found.append((os.path.join(folder, name), alive(int(owner))))
    return found


def remove_leftovers(folder=None):
    """Removes the job folders of launchers that are gone (killed before they could clean up);
    returns their paths."""
    removed = []
    for path, running in job_folders(folder):
        if not running:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _default_ps_command():
    # -P keeps the current directory off sys.path: run from a source checkout, its psflow/
    # folder would otherwise shadow the installed package and hide psflow.ps.
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []
    return [sys.executable, *safe_path, "-m", "psflow.ps"]


MATH_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _free_ports(host, count, base=0):
    """`count` ports free on `host` now: base, base+1, ... where free (when base is given),
    else ports the system picks."""
    ports = []
    for i in range(count):
        for wanted in ((base + i, 0) if base else (0,)):
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
                try:
                    sock.bind((host, wanted))
                except OSError:
                    continue
                port = sock.getsockname()[1]
                if port not in ports:
                    ports.append(port)
                    break
    return ports


def default_checkpoint_roots():
    """Where a local job's parameter servers may write checkpoints by default: the current
    directory and the system's temporary folder."""
    return os.pathsep.join([os.getcwd(), tempfile.gettempdir()])


def available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def math_thread_env(threads):
    """Caps the BLAS/OpenMP threads of a child at `threads`, unless the user chose a number.
    Every worker's numpy would otherwise start one spinning BLAS thread per core, and N
    workers on C cores fight over them: on 2 cores, 2 workers run several times slower."""
    return {name: str(threads) for name in MATH_THREAD_VARIABLES if name not in os.environ}


@dataclasses.dataclass
class JobSpec:
    """What `run_job` runs: `workers` processes of `script` and `ps` parameter servers.

    `ps_port` 0 lets every parameter server take a free port; otherwise PS i asks for
    `ps_port + i` and takes a free one if that is taken. `grace_period` is the time between
    SIGTERM and SIGKILL. `ps_command` is how a parameter server is started (the PS flags are
    appended to it).
    """

    script: str
    script_args: list = dataclasses.field(default_factory=list)
    workers: int = 1
    ps: int = 1
    mode: str = "async"
    staleness: int = 0
    replicas_to_aggregate: int = 0
    ps_port: int = 0
    max_restarts: int = 3
    host: str = "127.0.0.1"
    grace_period: float = 5.0
    progress: bool = True
    ps_start_timeout: float = 30.0
    ps_exit_timeout: float = 30.0
    timeout: float = 0.0
    idle_timeout: float = 600.0
    checkpoint_root: str = dataclasses.field(default_factory=lambda: default_checkpoint_roots())
    ps_command: list = dataclasses.field(default_factory=_default_ps_command)
    # TF1's classic flags: each worker gets --ps_hosts, --worker_hosts, --job_name=worker and
    # --task_index; with script_ps the ps tasks are the script too (--job_name=ps), serving
    # in its tf.train.Server(...).join().
    tf_flags: bool = False
    script_ps: bool = False
    # Serve Prometheus metrics from every process, on free ports picked at the start.
    metrics: bool = False

    def classic_flags(self, ps_addresses, job_name, index):
        workers = ",".join(f"{self.host}:0" for _ in range(self.workers))
        return [f"--ps_hosts={','.join(ps_addresses)}", f"--worker_hosts={workers}",
                f"--job_name={job_name}", f"--task_index={index}"]

    @property
    def consistency(self):
        """The job's training mode (psflow.train.consistency.Consistency)."""
        return Consistency(self.mode, self.replicas_to_aggregate, self.staleness)

    def validate(self):
        """Raises ValueError naming the first thing that is wrong."""
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"the job needs at least 1 worker, got {self.workers!r}")
        if not isinstance(self.ps, int) or self.ps < 1:
            raise ValueError(f"the job needs at least 1 parameter server, got {self.ps!r}")
        self.consistency  # raises ValueError naming what is wrong with the mode
        if self.replicas_to_aggregate > self.workers:
            raise ValueError(f"replicas_to_aggregate ({self.replicas_to_aggregate}) is more "
                             f"than the {self.workers} workers")
        if not isinstance(self.max_restarts, int) or self.max_restarts < 0:
            raise ValueError(f"max_restarts must be a whole number >= 0, got "
                             f"{self.max_restarts!r}")
        if not isinstance(self.ps_port, int) or not 0 <= self.ps_port <= 65535:
            raise ValueError(f"the PS port must be from 0 to 65535, got {self.ps_port!r}")
        if self.ps_port and self.ps_port + self.ps - 1 > 65535:
            raise ValueError(f"PS ports {self.ps_port}..{self.ps_port + self.ps - 1} go past "
                             "65535")
        for what in ("grace_period", "ps_start_timeout", "ps_exit_timeout"):
            value = getattr(self, what)
            if not (isinstance(value, (int, float)) and 0 < value < float("inf")):
                raise ValueError(f"{what} must be a positive number of seconds, got {value!r}")
        for what in ("timeout", "idle_timeout"):  # 0: no bound
            value = getattr(self, what)
            if not (isinstance(value, (int, float)) and 0 <= value < float("inf")):
                raise ValueError(f"{what} must be 0 or more seconds, got {value!r}")
        script = str(self.script)
        if not (os.path.isfile(script) or os.path.isfile(os.path.join(script, "__main__.py"))):
            raise ValueError(f"script not found: {script}" if not os.path.exists(script) else
                             f"not a runnable script: {script}")


class Job:
    """One run of a JobSpec. `run()` once; `stop()` from any thread ends it early."""

    def __init__(self, spec, stdout=None, stderr=None):
        spec.validate()
        self.spec = spec
        self.output = Output(stdout, stderr)
        self.ps = []
        self.workers = []
        self.lost = []  # workers that failed while the job went on (sync, ssp)
        self.never_joined = []  # workers that exited 0 without registering with the PS
        self._moved = {}  # worker index -> (its last local step seen or None, when it changed)
        # Every call of the job carries this token; the servers refuse calls without it.
        self.token = auth.token_from_env() or secrets.token_urlsafe(32)
        self.restarts = {}  # worker index -> times restarted
        self.ps_restarts = {}  # PS index -> times restarted
        self._worker_start = {}  # worker index -> (command, env)
        self.ps_addresses = []
        self.metrics_ports = {}  # ("ps" or "worker", index) -> its /metrics port
        self.progress = None
        self.stop_signal = None
        self._stop = threading.Event()   # the one stop event
        self._hurry = threading.Event()  # a second stop: no more grace
        self._tmp = None
        self._started_at = None
        self.watchdog = None

    def stop(self, signum=None):
        """Asks the job to stop (as a signal to the launcher does); a second call while it is
        stopping skips the grace period."""
        if self._stop.is_set():
            self._hurry.set()
            return
        if signum is not None:
            self.stop_signal = signum
        self._stop.set()

    def run(self):
        """Runs the job to its end; returns the launcher's exit code."""
        self._started_at = time.monotonic()
        handlers = self._catch_signals()
        try:
            remove_leftovers()
            self.watchdog = Watchdog()
            self._tmp = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-")
            self.watchdog.say(f"dir {self._tmp}")
            return self._run()
        finally:
            try:
                self._teardown()
            finally:
                for signum, handler in handlers.items():
                    signal.signal(signum, handler)
                if self._tmp:
                    shutil.rmtree(self._tmp, ignore_errors=True)
                if self.watchdog is not None:
                    self.watchdog.close()

    # -- phases -----------------------------------------------------------------------------------
    def _run(self):
        if self.spec.metrics:
            self._pick_metrics_ports()
        self.ps_addresses = self._start_ps()
        if self.ps_addresses is None:
            return self._stopped_by_signal() if self._stop.is_set() else 1
        atomic_write(os.path.join(self._tmp, JOB_FILE), json.dumps(
            {"ps": self.ps_addresses, "token": self.token}).encode())
        self.output.launcher(f"job status: launch --status {','.join(self.ps_addresses)}")
        self._start_workers()
        self.progress = ProgressPoller(list(self.ps_addresses), self.output, token=self.token,
                                       show=self.spec.progress).start()
        return self._supervise()

    def _start_ps(self):
        """Starts the parameter servers and waits for their ports; their addresses, or None
        after saying why the job cannot start."""
        spec = self.spec
        env = dict(os.environ, PYTHONUNBUFFERED="1", **math_thread_env(1))
        env[auth.TOKEN_ENV] = self.token
        self._ps_env = env
        port_files = []
        # The script's own ps tasks must know every address before they start.
        self._script_ps_ports = _free_ports(spec.host, spec.ps, spec.ps_port) \
            if spec.script_ps else None
        for i in range(spec.ps):
            port_files.append(os.path.join(self._tmp, f"ps-{i}.port"))
            wanted = spec.ps_port + i if spec.ps_port else 0
            child = self._ps_child(i, wanted, port_files[i], fallback=True)
            self.ps.append(child)
            self.output.launcher(f"started {child.name} (pid {child.pid})")
        ports = [None] * spec.ps
        deadline = time.monotonic() + spec.ps_start_timeout
        while None in ports:
            if self._stop.is_set():
                return None
            for i, child in enumerate(self.ps):
                if ports[i] is not None:
                    continue
                try:
                    exited = not child.running
                    # Read after looking at the process: a PS may write the file and exit.
                    ports[i] = self._read_port(port_files[i])
                except ValueError as exc:
                    self.output.error(f"{child.name}: {exc}; stopping the job")
                    return None
                if ports[i] is None and exited:
                    self.output.error(f"{child.name} {describe_exit(child.exit_code())} "
                                      "before reporting its port; stopping the job")
                    return None
                if ports[i] is not None:
                    wanted = spec.ps_port + i if spec.ps_port else 0
                    note = f" (port {wanted} was taken)" if wanted and wanted != ports[i] else ""
                    self.output.launcher(f"{child.name} serving on {spec.host}:{ports[i]}{note}")
            if None in ports and time.monotonic() > deadline:
                missing = ", ".join(self.ps[i].name for i, p in enumerate(ports) if p is None)
                self.output.error(f"{missing} did not report a port within "
                                  f"{spec.ps_start_timeout:g} s; stopping the job")
                return None
            self._stop.wait(POLL_S)
        return [f"{spec.host}:{port}" for port in ports]

    def _pick_metrics_ports(self):
        """Picks a free port for every process's /metrics and says where to scrape."""
        spec = self.spec
        roles = [("ps", i) for i in range(spec.ps)] + [("worker", i) for i in range(spec.workers)]
        ports = _free_ports(spec.host, len(roles))
        self.metrics_ports = dict(zip(roles, ports))
        self.output.launcher("metrics: " + ", ".join(
            f"{role}:{index} http://{spec.host}:{port}/metrics"
            for (role, index), port in self.metrics_ports.items()))

    def _metrics_env(self, role, index):
        port = self.metrics_ports.get((role, index))
        return {} if port is None else {monitoring.PORT_ENV: str(port),
                                        monitoring.HOST_ENV: self.spec.host}

    def _ps_child(self, index, port, port_file, fallback=False):
        """Starts PS `index`: `python -m psflow.ps`, or with script_ps the script itself as
        ps task `index` on the address chosen for it."""
        spec = self.spec
        if not spec.script_ps:
            command = [*spec.ps_command, "--task-index", str(index), "--num-workers",
                       str(spec.workers), "--host", spec.host, "--port", str(port),
                       "--port-file", port_file, "--checkpoint-root", spec.checkpoint_root,
                       "--parent-pid", str(os.getpid())] + (["--port-fallback"] if fallback
                                                            else [])
            return Child("ps", index, command, dict(self._ps_env,
                                                    **self._metrics_env("ps", index)),
                         self.output, self.watchdog)
        addresses = [f"{spec.host}:{p}" for p in self._script_ps_ports]
        cluster = {"ps": addresses, "worker": [f"{spec.host}:0"] * spec.workers}
        env = dict(self._ps_env, PSFLOW_PS_PORT_FILE=port_file,
                   **self._metrics_env("ps", index),
                   PSFLOW_CHECKPOINT_ROOT=spec.checkpoint_root,
                   TF_CONFIG=json.dumps({"cluster": cluster,
                                         "task": {"type": "ps", "index": index}}),
                   **{PARENT_ENV: str(os.getpid())})
        command = [sys.executable, "-u", str(spec.script), *spec.script_args,
                   *spec.classic_flags(addresses, "ps", index)]
        return Child("ps", index, command, env, self.output, self.watchdog)

    def _restart_ps(self, child):
        """Starts PS `child.index` again on the same address (the workers' TF_CONFIG names
        it); True once it serves there. The chief restores its variables from the latest
        checkpoint."""
        index = child.index
        self.ps_restarts[index] = self.ps_restarts.get(index, 0) + 1
        child.reap()
        port = int(self.ps_addresses[index].rsplit(":", 1)[1])
        port_file = os.path.join(self._tmp, f"ps-{index}.restart-{self.ps_restarts[index]}.port")
        fresh = self._ps_child(index, port, port_file)
        self.ps[index] = fresh
        self.output.launcher(f"started {fresh.name} (pid {fresh.pid}) on "
                             f"{self.ps_addresses[index]}, restart {self.ps_restarts[index]} of {self.spec.max_restarts}")
        deadline = time.monotonic() + self.spec.ps_start_timeout
        while time.monotonic() < deadline:
            try:
                if self._read_port(port_file) == port:
                    return True
            except ValueError:
                return False
            if not fresh.running or self._stop.wait(POLL_S):
                return False
        return False

    @staticmethod
    def _read_port(path):
        """The port in a PS's port file; None while there is no file. The PS writes the file
        atomically, so it is complete once it exists."""
        try:
            with open(path) as f:
                text = f.read().strip()
        except FileNotFoundError:
            return None
        if not text.isdigit() or not 0 < int(text) <= 65535:
            raise ValueError(f"its port file holds {text!r}, not a port number")
        return int(text)

    def _start_workers(self):
        spec = self.spec
        cluster = {"ps": list(self.ps_addresses),
                   "worker": [f"{spec.host}:0"] * spec.workers}
        command = [sys.executable, "-u", str(spec.script), *spec.script_args]
        threads = max(1, available_cores() // spec.workers)
        for i in range(spec.workers):
            if spec.tf_flags or spec.script_ps:
                command = [sys.executable, "-u", str(spec.script), *spec.script_args,
                           *spec.classic_flags(self.ps_addresses, "worker", i)]
            tf_config = {"cluster": cluster, "task": {"type": "worker", "index": i}}
            env = dict(os.environ, TF_CONFIG=json.dumps(tf_config),
                       **{PARENT_ENV: str(os.getpid())}, **spec.consistency.to_env(),
                       PYTHONUNBUFFERED="1", **math_thread_env(threads),
                       **self._metrics_env("worker", i))
            env[auth.TOKEN_ENV] = self.token
            self._worker_start[i] = (command, env)
            child = Child("worker", i, command, env, self.output, self.watchdog)
            self._moved[i] = (None, time.monotonic())
            self.workers.append(child)
            self.output.launcher(f"started {child.name} (pid {child.pid})")

    def _restart_worker(self, child):
        """Starts worker `child.index` again in place of the one that failed."""
        index = child.index
        self.restarts[index] = self.restarts.get(index, 0) + 1
        child.reap()
        command, env = self._worker_start[index]
        fresh = Child("worker", index, command, env, self.output, self.watchdog)
        self._moved[index] = (None, time.monotonic())
        self.workers[index] = fresh
        self.output.launcher(f"started {fresh.name} (pid {fresh.pid}), restart "
                             f"{self.restarts[index]} of {self.spec.max_restarts}")

    def _supervise(self):
        """Watches the workers until all have exited 0 or something ends the job early."""
        ps_ended_at = None  # when a PS first ended normally while workers still ran
        ps_ended = []
        while True:
            if self._stop.is_set():
                return self._stopped_by_signal()
            # A parameter server that crashed is the likelier cause of a worker's failure
            # seen in the same round, so it is named first.
            for child in list(self.ps):
                code = child.exit_code()
                if code is None or child.name in ps_ended:
                    continue
                if code != 0:
                    if self.ps_restarts.get(child.index, 0) < self.spec.max_restarts \
                            and not ps_ended:
                        self.output.error(f"{child.name} {describe_exit(code)} while the "
                                          "workers were running; restarting it")
                        if self._restart_ps(child):
                            continue
                        self.output.error(f"{child.name} could not be restarted on "
                                          f"{self.ps_addresses[child.index]}; stopping the job")
                        return 1
                    self.output.error(f"{child.name} {describe_exit(code)} while the workers "
                                      "were running; stopping the job")
                    return 1
                # A PS ends by itself once every worker has reported done: the workers
                # should be exiting too. Give them a moment before calling it a failure.
                ps_ended.append(child.name)
                ps_ended_at = ps_ended_at or time.monotonic()
            for child in self.workers:
                code = child.exit_code()
                if code == 0 and child not in self.never_joined and not self._joined(child):
                    self.never_joined.append(child)
                    self.output.error(f"{child.name} exited with code 0 without ever joining the "
                                      "job (it never registered with the parameter servers); "
                                      "the job goes on without it")
                    report_worker_done(self.ps_addresses, child.index, token=self.token)
                if code and child not in self.lost:
                    after = f" (after {', '.join(ps_ended)} exited)" if ps_ended else ""
                    if self.restarts.get(child.index, 0) < self.spec.max_restarts \
                            and not ps_ended:
                        self.output.error(f"{child.name} {describe_exit(code)}{after}; "
                                          "restarting it")
                        self._restart_worker(child)
                        continue
                    if not self.spec.consistency.needs_membership:
                        self.output.error(f"{child.name} {describe_exit(code)}{after}; "
                                          "stopping the job")
                        return 1
                    # Its steps go on with the others; the PS stop waiting for it.
                    self.lost.append(child)
                    self.output.error(f"{child.name} {describe_exit(code)}{after}; the job "
                                      f"goes on with the other workers ({self.spec.mode} mode)")
                    report_worker_done(self.ps_addresses, child.index, token=self.token)
            if all(child.exit_code() is not None for child in self.workers):
                if len(self.lost) + len(self.never_joined) == len(self.workers):
                    self.output.error("no worker finished its work; stopping the job")
                    return 1
                return self._finish()
            stuck = self._past_a_bound()
            if stuck:
                self.output.error(stuck)
                return 1
            if ps_ended_at is not None and \
                    time.monotonic() - ps_ended_at > WORKERS_AFTER_PS_EXIT_S:
                running = ", ".join(c.name for c in self.workers if c.running)
                self.output.error(f"{', '.join(ps_ended)} exited while {running} still ran; "
                                  "stopping the job")
                return 1
            self._stop.wait(POLL_S)

    def _finish(self):
        """Every worker exited 0: the parameter servers should be exiting by themselves."""
        # Shard 0 may still answer: its final global step makes the summary exact.
        final = self.progress.poll() if self.progress else None
        deadline = time.monotonic() + self.spec.ps_exit_timeout
        while any(c.running for c in self.ps) and time.monotonic() < deadline:
            if self._stop.wait(POLL_S):
                return self._stopped_by_signal()
        lingering = [c for c in self.ps if c.running]
        if lingering:
            self.output.error(f"warning: {', '.join(c.name for c in lingering)} still running "
                              f"{self.spec.ps_exit_timeout:g} s after every worker finished; "
                              "stopping it")
            self._terminate(lingering)
        for child in self.ps:
            if child not in lingering and child.exit_code() != 0:
                self.output.error(f"warning: {child.name} {describe_exit(child.exit_code())} "
                                  "after the workers finished")
        if self.progress:
            self.progress.stop()
        self.output.launcher(self._summary(lingering, final))
        missing = [f"{c.name} (it {describe_exit(c.exit_code())})" for c in self.lost] + \
            [f"{c.name} (it never joined)" for c in self.never_joined]
        if missing:
            self.output.error("job finished without " + ", ".join(missing))
            return 1
        return 0

    # -- bounds -----------------------------------------------------------------------------------
    def _rows(self):
        """{worker index: WorkerStats} from shard 0's last stats the poller got."""
        stats = self.progress.last_stats
        return {w.task_index: w for w in stats.workers} if stats is not None else {}

    def _joined(self, child):
        """Whether worker `child` ever registered with the parameter servers, asked of shard 0
        now. A shard 0 that does not answer has usually exited because every worker reported
        done, so then it counts as joined."""
        stats = self.progress.poll()
        if stats is None:
            return True
        return any(w.task_index == child.index and w.registered for w in stats.workers)

    def _describe(self, child, row, now):
        if row is None or not row.registered:
            started = self._moved[child.index][1]
            return (f"{child.name} (never connected to the parameter servers; started "
                    f"{now - started:.0f} s ago)")
        return (f"{child.name} (local step {row.local_step}: "
                f"{row.activity or 'no activity reported'})")

    def _past_a_bound(self):
        """A message naming the stuck workers when the job has run past --timeout, or a running
        worker has made no step for --idle-timeout seconds; else None."""
        spec, now = self.spec, time.monotonic()
        rows = self._rows()
        running = [c for c in self.workers if c.running]
        for child in running:
            row = rows.get(child.index)
            step = row.local_step if row is not None and row.registered else None
            if step != self._moved[child.index][0]:
                self._moved[child.index] = (step, now)
        if spec.timeout and now - self._started_at > spec.timeout:
            return (f"the job ran past its --timeout of {spec.timeout:g} s; still running: " +
                    ", ".join(self._describe(c, rows.get(c.index), now) for c in running) +
                    "; stopping the job")
        idle = [c for c in running if now - self._moved[c.index][1] > spec.idle_timeout]
        if spec.idle_timeout and idle:
            return (f"no step for {spec.idle_timeout:g} s from " +
                    ", ".join(self._describe(c, rows.get(c.index), now) for c in idle) +
                    " (--idle-timeout); stopping the job")
        return None

    def _summary(self, lingering, final_stats):
        elapsed = time.monotonic() - self._started_at
        succeeded = len(self.workers) - len(self.lost)
        parts = [f"{succeeded} worker{'s' if succeeded != 1 else ''} succeeded"]
        if self.restarts:
            parts.append(f"{sum(self.restarts.values())} worker restart"
                         f"{'s' if sum(self.restarts.values()) > 1 else ''}")
        on_their_own = len(self.ps) - len(lingering)
        parts.append(f"{on_their_own} of {len(self.ps)} parameter servers exited by themselves")
        if final_stats is not None:
            parts.append(f"global step {final_stats.global_step}")
        elif self.progress and self.progress.last_stats is not None:
            parts.append(f"last seen at global step {self.progress.last_stats.global_step}")
        return f"job finished in {elapsed:.1f} s: " + ", ".join(parts)

    def _stopped_by_signal(self):
        signum = self.stop_signal
        name = signal.Signals(signum).name if signum else "a stop request"
        self.output.error(f"received {name}; stopping the job")
        return 128 + signum if signum else 1

    # -- stopping ---------------------------------------------------------------------------------
    def _terminate(self, children):
        """SIGTERM to the children's groups, SIGKILL to those still running after the grace
        period (or at once on a second stop)."""
        for child in children:
            child.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + self.spec.grace_period
        while any(c.running for c in children) and time.monotonic() < deadline:
            if self._hurry.wait(POLL_S):
                break
        for child in children:
            if child.running:
                self.output.error(f"{child.name} still running {self.spec.grace_period:g} s "
                                  "after SIGTERM; killing it")
                child.signal_group(signal.SIGKILL)

    def _teardown(self):
        """Stops whatever still runs and reaps every child."""
        if self.progress:
            self.progress.stop()
        children = self.workers + self.ps
        if any(c.running for c in children):
            self._terminate(children)
        for child in children:
            child.reap()  # also SIGKILLs what is left of its group
        self.output.clear_status()

    def _catch_signals(self):
        if threading.current_thread() is not threading.main_thread():
            return {}  # signals are the caller's business; Job.stop() still works

        def on_signal(signum, frame):
            self.stop(signum)
        return {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}


def run_job(spec, stdout=None, stderr=None):
    """Runs the job `spec` (a JobSpec) on this machine and returns the launcher's exit code:
    0 when every worker succeeded, 1 when a process failed, 128 + N after signal N.

    Children's lines go to `stdout`/`stderr` (default: sys.stdout/sys.stderr) with their role
    as prefix. ValueError if the spec is invalid. Called from the main thread, SIGINT, SIGTERM
    and SIGHUP stop the job while it runs.
    """
    return Job(spec, stdout, stderr).run()
