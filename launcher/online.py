"""How a local job runs in online mode (`launch --online`): it trains on an unbounded stream,
so nothing ends it but a stop.

- The parameter servers run with --online: they never exit on their own. One that exits is
  started again on its address (the chief restores it from the latest checkpoint); a replica
  of a chain (--ps-replicas) is replaced as in any job (see launcher.replicated_shards).
- A worker that fails is started again after a backoff (1 s, doubling to 60 s; back to 1 s once
  it ran for a minute), without bound: a job that runs for weeks outlives any count.
- A worker that exits 0 has finished its stream (an idle timeout or a file bound in its
  dataset); once every worker has, the parameter servers are stopped and the job ends, 0.
- SIGTERM, SIGINT or SIGHUP (one stop event) stops the job in order: SIGTERM to the workers
  other than the chief, which end their current step, report done and exit; then SIGTERM to
  the chief, which ends its step and writes the final checkpoint, holding every worker's last
  step and input position; then the parameter servers. Each stage gets `stop_timeout`
  seconds, and a second signal skips the waiting. The exit code is 0 when every worker exited
  0 (the chief's final checkpoint written), else 1.
"""

import signal
import time

from .process import describe_exit

POLL_S = 0.05
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0
# A worker that ran this long before failing starts its backoff over.
BACKOFF_RESET_S = 60.0


def restart_delay(failures):
    """Seconds before restarting a worker that failed `failures` times in a row."""
    return min(BACKOFF_FIRST_S * 2 ** max(failures - 1, 0), BACKOFF_MAX_S)


class OnlineSupervision:
    """Job's supervision in online mode; it uses the job's `spec`, `output`, `ps`, `workers`,
    `_stop`, `_hurry`, `stop_signal`, `progress`, `_restart_ps`, `_restart_worker`,
    `_terminate`, `_past_a_bound` and, for chains of replicas, `_watch_chains`,
    `_drop_joining` and `_stop_master`."""

    def _supervise_online(self):
        now = time.monotonic()
        started = {child.index: now for child in self.workers}
        failures = {}
        due = {}  # worker index -> when it is started again
        ended = []  # replicas of chains that exited 0
        while True:
            if self._stop.is_set():
                return self._stop_online(due)
            self._watch_tier()
            if self.spec.ps_replicas > 1 and not self._watch_chains(ended):
                return 1
            for child in list(self.ps) if self.spec.ps_replicas == 1 else ():
                code = child.exit_code()
                if code is None:
                    continue
                self.output.error(f"{child.name} {describe_exit(code)}; restarting it "
                                  "(online job)")
                if not self._restart_ps(child) and not self._stop.is_set():
                    self.output.error(f"{child.name} could not be restarted; stopping the job")
                    return 1
            now = time.monotonic()
            for index, child in enumerate(list(self.workers)):
                if index in due:
                    if now >= due[index]:
                        del due[index]
                        self._restart_worker(child)
                        started[index] = now
                    continue
                code = child.exit_code()
                if not code:  # running, or finished its stream
                    continue
                ran = now - started[index]
                failures[index] = 1 if ran >= BACKOFF_RESET_S else failures.get(index, 0) + 1
                delay = restart_delay(failures[index])
                due[index] = now + delay
                self.output.error(f"{child.name} {describe_exit(code)}; restarting it in "
                                  f"{delay:g} s (online job)")
            if not due and all(child.exit_code() == 0 for child in self.workers):
                return self._finish_online()
            stuck = self._past_a_bound()
            if stuck:
                self.output.error(stuck)
                return 1
            self._stop.wait(POLL_S)

    def _finish_online(self):
        """Every worker finished its stream: the parameter servers are stopped."""
        self.output.launcher("every worker finished its stream; stopping the parameter servers")
        self._drop_joining()
        self._terminate([c for c in self.ps if c.running])
        self._stop_master()
        if self.progress:
            self.progress.stop()
        return 0

    def _stop_online(self, due):
        signum = self.stop_signal
        name = signal.Signals(signum).name if signum else "a stop request"
        self.output.launcher(f"received {name}; stopping the online job: the workers end their "
                             "step, then the chief writes the final checkpoint")
        chief = self.workers[0]
        others = [c for c in self.workers[1:] if c.running]
        self._stop_in_turn(others)
        if chief.running:
            self._stop_in_turn([chief])
        self._drop_joining()
        self._terminate([c for c in self.ps if c.running])
        self._stop_master()
        if self.progress:
            self.progress.stop()
        if 0 in due:
            self.output.error("worker 0 was waiting to be restarted after a failure, so no final "
                              "checkpoint was written; the job resumes from the latest one")
            return 1
        failed = [c for c in self.workers if c.index not in due and c.exit_code() != 0]
        if failed:
            self.output.error("stopped; " + ", ".join(
                f"{c.name} {describe_exit(c.exit_code())}" for c in failed))
            return 1
        self.output.launcher("online job stopped; the chief wrote its final checkpoint")
        return 0

    def _stop_in_turn(self, children):
        """SIGTERM to `children`, then up to stop_timeout seconds (unless a second stop comes)
        for them to exit; SIGKILL to those still running."""
        for child in children:
            child.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + self.spec.stop_timeout
        while any(c.running for c in children) and time.monotonic() < deadline:
            if self._hurry.wait(POLL_S):
                break
        for child in children:
            if child.running:
                self.output.error(f"{child.name} still running {self.spec.stop_timeout:g} s "
                                  "after SIGTERM; killing it")
                child.signal_group(signal.SIGKILL)
                child.reap()
