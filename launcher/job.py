"""Runs a job's processes on this machine and ends the job cleanly.

The parameter servers start first, then the workers (see job_processes). Every child leads a
process group of its own and its output lines are prefixed with its role (`[worker:1] ...`).

How a job ends:
- every worker exits 0: the parameter servers exit by themselves (every worker reported done);
  one that does not within `ps_exit_timeout` is stopped and named. Exit code 0.
- a worker fails (non-zero exit, or killed by a signal), or a parameter server dies while the
  workers run: the job stops and the process is named. Exit code 1.
- SIGINT, SIGTERM or SIGHUP to the launcher: one stop event; the job stops. Exit code 128 +
  the signal's number (130 for SIGINT, 143 for SIGTERM). A second signal skips the grace period.
- online (`launch --online`): only a stop ends the job, with a final checkpoint, exit code 0;
  see launcher.online.
- shards run as chains of replicas (`launch --ps-replicas R`): a replica that dies while its
  shard has another does not end the job, it is replaced; see launcher.replicated_shards.
Stopping sends SIGTERM to every child's group, then SIGKILL to whatever is left after the
grace period, and reaps every child: nothing the launcher started outlives `run_job`.
If the launcher itself is killed (even with SIGKILL), nothing of the job stays: the kernel
kills each child the instant its parent dies (a parent-death signal set before the child's
program starts), and the job's watchdog process kills every child's whole process group (what
a worker script started itself included) and removes the job's folder. A later launch also
removes folders whose launcher is gone.
"""

import json
import os
import secrets
import shutil
import signal
import threading
import time

from psflow.fileio import atomic_write
from psflow.transport import auth
from .job_folders import JOB_FILE, new_job_folder, remove_leftovers
from .job_processes import POLL_S, JobProcesses
from .online import OnlineSupervision
from .output import Output
from .process import Watchdog, describe_exit
from .progress import ProgressPoller, report_worker_done
from .replicated_shards import ReplicatedShards
from .serving_tier import ServingTier

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# How long the workers get to exit once a parameter server has ended normally (it does so when
# every worker has reported done, so the workers should be on their way out).
WORKERS_AFTER_PS_EXIT_S = 10.0


class Job(JobProcesses, OnlineSupervision, ServingTier, ReplicatedShards):
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
        # Shards run as chains (ps_replicas > 1): TF_CONFIG's "psflow" key, the chain master.
        self.chain_config = {}
        self.master = None
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
            self._tmp = new_job_folder()
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
        self.ps_addresses = self._start_ps() if self.spec.ps_replicas == 1 else \
            self._start_chains()
        if self.ps_addresses is None:
            return self._stopped_by_signal() if self._stop.is_set() else 1
        atomic_write(os.path.join(self._tmp, JOB_FILE), json.dumps(
            {"ps": self.ps_addresses, "token": self.token, **self.chain_config}).encode())
        self.output.launcher(f"job status: launch --status {','.join(self.ps_addresses)}")
        if self.spec.serving_replicas:
            if not self._start_tier():
                return self._stopped_by_signal() if self._stop.is_set() else 1
            # psflow-serve on this machine finds the job's token by the tier's addresses too
            atomic_write(os.path.join(self._tmp, JOB_FILE), json.dumps(
                {"ps": self.ps_addresses, "token": self.token,
                 "params": self.params_addresses}).encode())
        self._start_workers()
        self.progress = ProgressPoller(list(self.ps_addresses), self.output, token=self.token,
                                       show=self.spec.progress,
                                       chain_master=self._chain_master).start()
        return self._supervise_online() if self.spec.online else self._supervise()

    def _supervise(self):
        """Watches the workers until all have exited 0 or something ends the job early."""
        ps_ended_at = None  # when a PS first ended normally while workers still ran
        ps_ended = []
        while True:
            if self._stop.is_set():
                return self._stopped_by_signal()
            self._watch_tier()
            # A parameter server that crashed is the likelier cause of a worker's failure
            # seen in the same round, so it is named first.
            if not (self._watch_ps(ps_ended) if self.spec.ps_replicas == 1 else
                    self._watch_chains(ps_ended)):
                return 1
            if ps_ended:
                ps_ended_at = ps_ended_at or time.monotonic()
            for child in self.workers:
                code = child.exit_code()
                if code == 0 and child not in self.never_joined and not self._joined(child):
                    self.never_joined.append(child)
                    self.output.error(f"{child.name} exited with code 0 without ever joining the "
                                      "job (it never registered with the parameter servers); "
                                      "the job goes on without it")
                    report_worker_done(self.ps_addresses, child.index, token=self.token,
                                       chain_master=self._chain_master)
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
                    report_worker_done(self.ps_addresses, child.index, token=self.token,
                                       chain_master=self._chain_master)
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

    def _watch_ps(self, ps_ended):
        """One look at the parameter servers while the workers run: one that failed is
        restarted (within --max-restarts); one that exited 0 (every worker is done) is added
        to `ps_ended`. False, after saying why, when the job must stop."""
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
                    return False
                self.output.error(f"{child.name} {describe_exit(code)} while the workers "
                                  "were running; stopping the job")
                return False
            # A PS ends by itself once every worker has reported done: the workers
            # should be exiting too. Give them a moment before calling it a failure.
            ps_ended.append(child.name)
        return True

    def _finish(self):
        """Every worker exited 0: the parameter servers should be exiting by themselves."""
        # Shard 0 may still answer: its final global step makes the summary exact.
        final = self.progress.poll() if self.progress else None
        self._drop_joining()
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
        self._stop_master()
        self.output.launcher(self._summary(lingering, final))
        missing = [f"{c.name} (it {describe_exit(c.exit_code())})" for c in self.lost] + \
            [f"{c.name} (it never joined)" for c in self.never_joined]
        if missing:
            self.output.error("job finished without " + ", ".join(missing))
            return 1
        return 0

    @property
    def _chain_master(self):
        return self.chain_config.get("chain_master")

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
        what = "parameter servers" if self.spec.ps_replicas == 1 else "parameter-server replicas"
        parts.append(f"{on_their_own} of {len(self.ps)} {what} exited by themselves")
        if getattr(self, "replicas_lost", 0):
            parts.append(f"{self.replicas_lost} replica{'s' if self.replicas_lost > 1 else ''} "
                         "lost on the way")
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
        children = self.workers + self.ps + self._tier_children() + self._chain_children()
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
