"""The job's progress line: global step, steps/s and loss, read from the parameter servers.

About once a second the poller asks every shard for its GetStats. Shard 0 holds the global step
and the workers' reports; the rates between the looks of the last few seconds name a worker
far slower than the others and a shard far busier than the others, when there is one. A failed
call is skipped: the line is a convenience and never affects the job.
"""

import collections
import math
import threading

from psflow.errors import PsflowError
from psflow.worker import jobstats
from psflow.worker.client import ShardClient, worker_request

POLL_S = 1.0
RPC_TIMEOUT_S = 0.5
# Rates are measured over this window, so one slow poll does not make them jump.
RATE_WINDOW_S = 5.0
# The workers' steps arrive with their heartbeats, once a second: over a shorter span a running
# worker may seem to stand still, so the notes on who stands out wait for this much.
NOTES_AFTER_S = 3.0
# When stderr is not a terminal, a progress line is printed at most this often (and only
# when the global step has moved).
PRINT_EVERY_S = 5.0


def per_second(value):
    """A rate as the line shows it: `412` from 100 up, `3.1` below."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"


def standout_notes(rates):
    """`slowest worker 1 (3.1 steps/s)` and `hottest ps 0 (412 pushes/s)`, each only when
    that worker or shard stands out in `rates` (a jobstats.Rates, or None)."""
    if rates is None:
        return []
    notes = []
    slowest = rates.slowest_worker()
    if slowest is not None:
        notes.append(f"slowest worker {slowest[0]} ({per_second(slowest[1])} steps/s)")
    hottest = rates.hottest_shard()
    if hottest is not None:
        notes.append(f"hottest ps {hottest[0]} ({per_second(hottest[1])} pushes/s)")
    return notes


def format_progress(stats, rate=None, rates=None):
    """`step 120 | 35.2 steps/s | loss 0.4321 | 1/2 workers done` from a StatsResponse of
    shard 0 and the global step's rate (None when not known yet), then the notes on a worker or
    shard that stands out in `rates` (see standout_notes). The loss is the mean of the workers'
    last reported losses, NaN (none reported) left out."""
    parts = [f"step {stats.global_step}"]
    if rate is not None:
        parts.append(f"{rate:.1f} steps/s")
    parts += workers_parts(stats.workers)
    parts += standout_notes(rates)
    return " | ".join(parts)


def workers_parts(workers):
    """`loss 0.4321` (the mean of the workers' last reported losses, NaN left out) and `1/2
    workers done`, from shard 0's WorkerStats, for the parts that have something to say."""
    parts = []
    losses = [w.loss for w in workers if not math.isnan(w.loss)]
    if losses:
        parts.append(f"loss {sum(losses) / len(losses):.4g}")
    if workers:
        done = sum(1 for w in workers if w.done)
        parts.append(f"{done}/{len(workers)} workers done")
    return parts


class Window:
    """Timed samples of the last `window` seconds: the oldest one kept is the newest that is
    at least `window` seconds old, so the span measured is about `window`."""

    def __init__(self, window=RATE_WINDOW_S):
        self.window = window
        self._samples = collections.deque()

    def add(self, when, sample):
        """Records `sample` taken at time `when`; returns the oldest (when, sample) kept."""
        self._samples.append((when, sample))
        while len(self._samples) > 2 and when - self._samples[1][0] >= self.window:
            self._samples.popleft()
        return self._samples[0]


class ProgressPoller:
    """Polls every shard (`addresses`, shard 0 first) in a thread and, with `show`, shows the
    progress line on `output`. `last_stats` is shard 0's last StatsResponse, which the
    launcher's supervision reads (who joined, who moves). With `chain_master` (shards run as
    chains of replicas, `addresses` their heads at the start) it asks each shard's current
    head."""

    def __init__(self, addresses, output, interval=POLL_S, print_every=PRINT_EVERY_S,
                 token=None, show=True, chain_master=None):
        if isinstance(addresses, str):
            raise TypeError("ProgressPoller takes the list of the parameter servers' "
                            f"addresses, shard 0 first, not one string ({addresses!r})")
        if not addresses:
            raise ValueError("ProgressPoller needs the address of at least one parameter "
                             "server")
        self.output = output
        self.show = show
        self.interval = interval
        self.print_every = print_every
        self.last_stats = None  # shard 0's last StatsResponse, for the job's summary
        self._clients = [_client(shard, address, RPC_TIMEOUT_S, token, chain_master)
                         for shard, address in enumerate(addresses)]
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
            self._thread.join(timeout=len(self._clients) * RPC_TIMEOUT_S + 2.0)
        for client in self._clients:
            client.close()
        self.output.clear_status()

    def poll(self):
        """Asks shard 0 for its stats once; the StatsResponse, or None if the call failed."""
        stats = jobstats.fetch(self._clients[:1])[0]
        if stats is not None:
            self.last_stats = stats
        return stats

    def look(self):
        """Asks every shard for its stats once; the jobstats.Look."""
        look = jobstats.Look.take(self._clients)
        if look.chief is not None:
            self.last_stats = look.chief
        return look

    def _run(self):
        window = Window()
        last_printed_at, last_printed_step = None, 0
        while not self._stop.wait(self.interval):
            look = self.look()
            stats = look.chief
            if stats is None:
                continue
            first_when, first = window.add(look.when, look)
            rates = jobstats.rates(first, look) if look.when > first_when else None
            text = format_progress(stats, rates.steps_per_s if rates else None,
                                   rates if rates and rates.seconds >= NOTES_AFTER_S else None)
            if self._stop.is_set():
                return
            if not self.show:
                continue
            now = look.when
            if self.output.tty:
                self.output.status(text)
            elif stats.global_step != last_printed_step and (
                    last_printed_at is None or now - last_printed_at >= self.print_every):
                last_printed_at, last_printed_step = now, stats.global_step
                self.output.status(text)


def _client(shard, address, timeout, token, chain_master):
    """A ShardClient of `shard`; with `chain_master`, one that calls the current head of its
    chain (the one at `address` when the master does not answer)."""
    if chain_master:
        try:
            return ShardClient(shard, address, timeout=timeout, token=token or "",
                               chain_master=chain_master)
        except PsflowError:
            pass
    return ShardClient(shard, address, timeout=timeout, token=token or "")


def report_worker_done(addresses, index, token=None, timeout=5.0, chain_master=None):
    """Tells every parameter server that worker `index` is gone for good (it died while the
    job went on), so they stop counting on it and exit when the others are done. Best effort:
    a server that does not answer learns it from the missing heartbeats. With `chain_master`
    (`addresses`: the heads of chains at the start), each shard's current head is told."""
    for shard, address in enumerate(addresses):
        client = _client(shard, address, timeout, token, chain_master)
        try:
            client.call("WorkerDone", worker_request(index), wait_for_ready=False)
        except PsflowError:
            pass
        finally:
            client.close()
