"""Runs a job's processes and ends it cleanly.

Each child runs in its own process group, so a stop reaches whatever it started; its output
lines are prefixed with its role (`[worker:1] ...`). SIGINT and SIGTERM become one stop event.
The first failure stops the rest and is named. When every worker has finished, the parameter
servers exit by themselves (the workers reported done); stragglers get SIGTERM, then SIGKILL
after the grace period. Nothing the launcher started outlives it.
"""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from .output import Output
from .progress import ProgressPoller

PS_START_TIMEOUT_S = 30.0
PS_EXIT_TIMEOUT_S = 30.0
POLL_S = 0.05


@dataclasses.dataclass
class JobSpec:
    script: str
    script_args: list
    workers: int
    ps: int
    mode: str = "async"
    ps_port: int = 0
    host: str = "127.0.0.1"
    grace_period: float = 5.0
    progress: bool = True


class Child:
    """One process of the job and the threads that copy its output."""

    def __init__(self, role, index, command, env, output):
        self.role, self.index = role, index
        self.name = f"{role}:{index}"
        self.process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        start_new_session=True)
        self.pumps = [threading.Thread(target=output.pump, args=(self.name, stream, is_err),
                                       daemon=True, name=f"pump-{self.name}")
                      for stream, is_err in ((self.process.stdout, False),
                                             (self.process.stderr, True))]
        for pump in self.pumps:
            pump.start()

    @property
    def pid(self):
        return self.process.pid

    def poll(self):
        return self.process.poll()

    def signal(self, signum):
        try:
            os.killpg(self.process.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def reap(self):
        self.process.wait()
        for pump in self.pumps:
            pump.join(timeout=5)


def describe_exit(code):
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"failed with exit code {code}"


class Job:
    def __init__(self, spec):
        self.spec = spec
        self.output = Output()
        self.ps = []
        self.workers = []
        self.stop_signal = None
        self._stop = threading.Event()
        self._tmp = tempfile.mkdtemp(prefix="psflow-launch-")
        self.progress = None

    # -- signals -----------------------------------------------------------------------------
    def _on_signal(self, signum, frame):
        if self.stop_signal is None:
            self.stop_signal = signum
        self._stop.set()

    def run(self):
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return self._run()
        finally:
            self._teardown()
            for s, handler in previous.items():
                signal.signal(s, handler)
            shutil.rmtree(self._tmp, ignore_errors=True)

    # -- phases ------------------------------------------------------------------------------
    def _run(self):
        addresses = self._start_ps()
        if addresses is None:
            return self._exit_code(1)
        self._start_workers(addresses)
        if self.spec.progress:
            self.progress = ProgressPoller(addresses[0], self.output)
            self.progress.start()
        return self._supervise()

    def _start_ps(self):
        spec = self.spec
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        port_files = []
        for i in range(spec.ps):
            port_file = os.path.join(self._tmp, f"ps-{i}.port")
            port_files.append(port_file)
            command = [sys.executable, "-m", "psflow.ps", "--task-index", str(i),
                       "--num-workers", str(spec.workers), "--host", spec.host,
                       "--port", str(spec.ps_port + i if spec.ps_port else 0),
                       "--port-fallback", "--port-file", port_file,
                       "--parent-pid", str(os.getpid())]
            child = Child("ps", i, command, env, self.output)
            self.ps.append(child)
            self.output.launcher(f"started ps:{i} (pid {child.pid})")
        ports = [None] * spec.ps
        deadline = time.monotonic() + PS_START_TIMEOUT_S
        while None in ports:
            if self._stop.is_set():
                return None
            for i, child in enumerate(self.ps):
                if ports[i] is None and os.path.exists(port_files[i]):
                    with open(port_files[i]) as f:
                        ports[i] = int(f.read().strip())
                code = child.poll()
                if ports[i] is None and code is not None:
                    self.output.error(f"ps:{i} {describe_exit(code)} before it was serving; "
                                      "stopping the job")
                    return None
            if time.monotonic() > deadline:
                missing = ", ".join(f"ps:{i}" for i, p in enumerate(ports) if p is None)
                self.output.error(f"{missing} did not start serving within "
                                  f"{PS_START_TIMEOUT_S:.0f} s; stopping the job")
                return None
            time.sleep(POLL_S)
        return [f"{spec.host}:{port}" for port in ports]

    def _start_workers(self, ps_addresses):
        spec = self.spec
        cluster = {"ps": ps_addresses, "worker": [f"{spec.host}:0"] * spec.workers}
        command = [sys.executable, "-u", spec.script, *spec.script_args]
        for i in range(spec.workers):
            env = dict(os.environ, PYTHONUNBUFFERED="1", PSFLOW_MODE=spec.mode,
                       PSFLOW_PARENT_PID=str(os.getpid()),
                       TF_CONFIG=json.dumps({"cluster": cluster,
                                             "task": {"type": "worker", "index": i}}))
            child = Child("worker", i, command, env, self.output)
            self.workers.append(child)
            self.output.launcher(f"started worker:{i} (pid {child.pid})")

    def _supervise(self):
        finished = set()
        while True:
            if self._stop.is_set():
                name = signal.Signals(self.stop_signal).name if self.stop_signal else "stop"
                self.output.error(f"received {name}; stopping the job")
                return self._exit_code(1)
            for child in self.workers:
                if child.name in finished:
                    continue
                code = child.poll()
                if code is None:
                    continue
                if code != 0:
                    self.output.error(f"{child.name} {describe_exit(code)}; stopping the job")
                    return self._exit_code(1)
                finished.add(child.name)
            if len(finished) == len(self.workers):
                return self._finish()
            for child in self.ps:
                code = child.poll()
                if code is not None:
                    how = describe_exit(code) if code else "exited"
                    self.output.error(f"{child.name} {how} while workers were running; "
                                      "stopping the job")
                    return self._exit_code(1)
            time.sleep(POLL_S)

    def _finish(self):
        """All workers succeeded: the parameter servers should now be exiting by themselves."""
        deadline = time.monotonic() + PS_EXIT_TIMEOUT_S
        while any(c.poll() is None for c in self.ps) and time.monotonic() < deadline:
            if self._stop.is_set():
                break
            time.sleep(POLL_S)
        lingering = [c.name for c in self.ps if c.poll() is None]
        if lingering:
            self.output.error(f"{', '.join(lingering)} still running after every worker "
                              "finished; stopping it")
        failed = [c for c in self.ps if c.poll() not in (None, 0)]
        for child in failed:
            self.output.error(f"{child.name} {describe_exit(child.poll())}")
        if self.progress:
            self.progress.stop()
        self.output.launcher(f"job finished: {len(self.workers)} workers succeeded")
        return 0

    def _exit_code(self, code):
        if self.stop_signal is not None:
            return 128 + self.stop_signal
        return code

    def _teardown(self):
        """SIGTERM to every live child's group, SIGKILL after the grace period, reap all."""
        if self.progress:
            self.progress.stop()
        children = self.workers + self.ps
        alive = [c for c in children if c.poll() is None]
        for child in alive:
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + self.spec.grace_period
        while any(c.poll() is None for c in alive) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        for child in alive:
            if child.poll() is None:
                self.output.error(f"{child.name} did not stop within "
                                  f"{self.spec.grace_period:g} s; killing it")
                child.signal(signal.SIGKILL)
        for child in children:
            child.reap()
            # The group may still hold processes the child started; none may outlive the job.
            child.signal(signal.SIGKILL)
        self.output.close()


def run_job(spec):
    """Runs the job; returns the launcher's exit code (0 when every worker succeeded)."""
    return Job(spec).run()
