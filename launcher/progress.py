"""The job's progress line: global step, steps/s and loss, read from parameter server 0.

About once a second the poller asks shard 0 (which holds the global step) for its GetStats.
A failed call is skipped: the line is a convenience and never affects the job.
"""

import collections
import math
import threading
import time

from psflow.errors import PsflowError
from psflow.proto import psflow_pb2 as pb
from psflow.worker.client import ShardClient, worker_request

POLL_S = 1.0
RPC_TIMEOUT_S = 0.5
# steps/s is the global step's rate over this window, so one slow poll does not make it jump.
RATE_WINDOW_S = 5.0
# When stderr is not a terminal, a progress line is printed at most this often (and only
# when the global step has moved).
PRINT_EVERY_S = 5.0


def format_progress(stats, rate=None):
    """`step 120 | 35.2 steps/s | loss 0.4321 | 1/2 workers done` from a StatsResponse of
    shard 0 and the global step's rate (None when not known yet). The loss is the mean of the
    workers' last reported losses, NaN (none reported) left out."""
    parts = [f"step {stats.global_step}"]
    if rate is not None:
        parts.append(f"{rate:.1f} steps/s")
    losses = [w.loss for w in stats.workers if not math.isnan(w.loss)]
    if losses:
        parts.append(f"loss {sum(losses) / len(losses):.4g}")
    if stats.workers:
        done = sum(1 for w in stats.workers if w.done)
        parts.append(f"{done}/{len(stats.workers)} workers done")
    return " | ".join(parts)


class StepRate:
    """The rate of a counter over the last `window` seconds."""

    def __init__(self, window=RATE_WINDOW_S):
        self.window = window
        self._samples = collections.deque()

    def add(self, when, value):
        """Records `value` at time `when`; returns the rate per second, or None with a single
        sample so far."""
        self._samples.append((when, value))
        while len(self._samples) > 2 and when - self._samples[1][0] >= self.window:
            self._samples.popleft()
        first_when, first_value = self._samples[0]
        if when <= first_when:
            return None
        return (value - first_value) / (when - first_when)


class ProgressPoller:
    """Polls shard 0 at `address` in a thread and, with `show`, shows the progress line on
    `output`. `last_stats` is what the launcher's supervision reads (who joined, who moves)."""

    def __init__(self, address, output, interval=POLL_S, print_every=PRINT_EVERY_S,
                 token=None, show=True):
        self.output = output
        self.show = show
        self.interval = interval
        self.print_every = print_every
        self.last_stats = None  # the last StatsResponse received, for the job's summary
        self._client = ShardClient(0, address, timeout=RPC_TIMEOUT_S, token=token or "")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        """Stops polling and removes the progress line. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=RPC_TIMEOUT_S + 2.0)
        self._client.close()
        self.output.clear_status()

    def poll(self):
        """Asks shard 0 for its stats once; the StatsResponse, or None if the call failed."""
        try:
            stats = self._client.call("GetStats", pb.StatsRequest(), wait_for_ready=False)
        except (PsflowError, ValueError):  # ValueError: the channel is closed
            return None
        self.last_stats = stats
        return stats

    def _run(self):
        rate = StepRate()
        last_printed_at, last_printed_step = None, 0
        while not self._stop.wait(self.interval):
            stats = self.poll()
            if stats is None:
                continue
            now = time.monotonic()
            text = format_progress(stats, rate.add(now, stats.global_step))
            if self._stop.is_set():
                return
            if not self.show:
                continue
            if self.output.tty:
                self.output.status(text)
            elif stats.global_step != last_printed_step and (
                    last_printed_at is None or now - last_printed_at >= self.print_every):
                last_printed_at, last_printed_step = now, stats.global_step
                self.output.status(text)


def report_worker_done(addresses, index, token=None, timeout=5.0):
    """Tells every parameter server that worker `index` is gone for good (it died while the
    job went on), so they stop counting on it and exit when the others are done. Best effort:
    a server that does not answer learns it from the missing heartbeats."""
    for shard, address in enumerate(addresses):
        client = ShardClient(shard, address, timeout=timeout, token=token or "")
        try:
            client.call("WorkerDone", worker_request(index), wait_for_ready=False)
        except PsflowError:
            pass
        finally:
            client.close()
