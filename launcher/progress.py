"""The job's progress line: global step, steps/s and loss, read from parameter server 0."""

import math
import threading
import time

import grpc

from psflow.proto import psflow_pb2 as pb
from psflow.proto import psflow_pb2_grpc as pb_grpc

POLL_S = 1.0
PRINT_EVERY_S = 5.0  # when the output is not a terminal


class ProgressPoller:
    def __init__(self, address, output):
        self.output = output
        self._channel = grpc.insecure_channel(address)
        self._stub = pb_grpc.ParameterServerStub(self._channel)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._last_printed = 0.0

    def start(self):
        self._thread.start()

    def stop(self):
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(timeout=3)
            self._channel.close()
            self.output.close()

    def _run(self):
        previous = None
        while not self._stop.wait(POLL_S):
            try:
                stats = self._stub.GetStats(pb.StatsRequest(), timeout=POLL_S)
            except grpc.RpcError:
                continue
            now = time.monotonic()
            rate = None
            if previous is not None and now > previous[0]:
                rate = (stats.global_step - previous[1]) / (now - previous[0])
            previous = (now, stats.global_step)
            text = format_progress(stats, rate)
            if self.output.tty or now - self._last_printed >= PRINT_EVERY_S:
                self._last_printed = now
                self.output.status(text)


def format_progress(stats, rate):
    parts = [f"step {stats.global_step}"]
    if rate is not None:
        parts.append(f"{rate:.1f} steps/s")
    losses = [w.loss for w in stats.workers if not math.isnan(w.loss) and w.local_step > 0]
    if losses:
        parts.append(f"loss {sum(losses) / len(losses):.4f}")
    done = sum(w.done for w in stats.workers)
    parts.append(f"workers done {done}/{len(stats.workers) or '?'}")
    return " | ".join(parts)
