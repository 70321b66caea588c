"""What following a parameter server costs: `changes_since` on a table of --rows rows (dim 16
float32) with 1% of them changed (scattered over the table, and in one run of rows), and a
parameter server's CPU per push with no follower and with one (serving.param_follower),
under pushes of --keys keys per step for --seconds seconds; then how fresh a follower is
(from a push's answer to the follower holding its row) under the same pushes.

    python bench/stream_costs.py [--rows 2000000] [--seconds 10] [--keys 4096]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import numpy as np

from psflow.embedding_table import EmbeddingTable
from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb
from psflow.proto import psflow_pb2_grpc as pb_grpc
from psflow.serving.param_follower import ShardFollower
from psflow.train.update_rules import UpdateRule

DIM = 16


def changes_since_costs(rows):
    table = EmbeddingTable("t", DIM, np.float32, {"kind": "zeros"})
    for start in range(0, rows, 1 << 18):
        table.lookup(np.arange(start, min(start + (1 << 18), rows), dtype=np.int64))
    sgd = UpdateRule("sgd", learning_rate=0.1)
    rng = np.random.default_rng(0)
    changed = rows // 100
    for kind, keys in (("scattered", np.unique(rng.integers(0, rows, size=changed))),
                       ("one run", np.arange(rows // 2, rows // 2 + changed))):
        since = table.clock.value
        table.apply(sgd, keys, np.ones((keys.size, DIM), np.float32))
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            found = table.changes_since(since)
            best = min(best, time.perf_counter() - started)
        assert found.keys.size == keys.size
        started = time.perf_counter()
        for _ in range(5):
            whole = table.values.view().copy()
        full = (time.perf_counter() - started) / 5
        del whole
        print(f"changes_since on {rows} rows, {keys.size} changed ({kind}): "
              f"{best * 1e3:.2f} ms (copying every row: {full * 1e3:.2f} ms)")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def publisher_costs(seconds, keys_per_step):
    with tempfile.TemporaryDirectory() as folder:
        port_file = os.path.join(folder, "port")
        ps = subprocess.Popen([sys.executable, "-m", "psflow.ps", "--task-index", "0",
                               "--num-workers", "1", "--port-file", port_file,
                               "--log-level", "WARNING"])
        try:
            while not os.path.exists(port_file):
                time.sleep(0.05)
            address = f"127.0.0.1:{int(open(port_file).read())}"
            channel = grpc.insecure_channel(address, options=codec.CHANNEL_OPTIONS)
            stub = pb_grpc.ParameterServerStub(channel)
            stub.DeclareVariables(pb.DeclareVariablesRequest(tables=[pb.TableSpec(
                name="t", dim=DIM, dtype="float32", initializer="zeros")]), timeout=30)
            rng = np.random.default_rng(1)
            step = [0]

            def run(followers):
                mirrors = [ShardFollower(address).start() for _ in range(followers)]
                for mirror in mirrors:
                    mirror.wait_synced(30)
                before, pushes = cpu_seconds(ps.pid), 0
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    keys = np.unique(rng.integers(0, 1_000_000, size=keys_per_step))
                    request = pb.PullRowsRequest(global_step=step[0])
                    codec.encode(keys, request.keys.add(name="t", train=True).keys)
                    stub.PullRows(request, timeout=30)
                    push = pb.PushRequest(rule=pb.UpdateRule(name="sgd", hyper={
                        "learning_rate": 0.1}), increment_global_step=True,
                        global_step=step[0])
                    gradient = push.gradients.add(name="t", keyed=True)
                    codec.encode(np.ones((keys.size, DIM), np.float32), gradient.values)
                    codec.encode(keys, gradient.indices)
                    stub.Push(push, timeout=30)
                    pushes += 1
                    step[0] += 1
                used = cpu_seconds(ps.pid) - before
                lag = [m.seq for m in mirrors]
                for mirror in mirrors:
                    mirror.stop()
                print(f"{followers} follower(s): {pushes} pushes of {keys_per_step} keys, "
                      f"ps CPU {used:.2f} s = {used / pushes * 1e3:.3f} ms per push "
                      f"(followers at sequence {lag})")
                return used / pushes

            freshness(address, stub, keys_per_step, seconds)
            run(0)  # warm up: the table's first rows
            ratios = []
            for _ in range(2):  # alternated: the machine's load drifts
                alone = run(0)
                ratios.append(run(1) / alone)
            print("CPU per push with one follower: " +
                  ", ".join(f"{r:.3f}x" for r in ratios) + " of none")
        finally:
            ps.terminate()
            ps.wait(timeout=30)


def push_rows(stub, keys, values, step=0):
    request = pb.PullRowsRequest(global_step=step)
    codec.encode(keys, request.keys.add(name="t", train=True).keys)
    stub.PullRows(request, timeout=30)
    push = pb.PushRequest(rule=pb.UpdateRule(name="sgd", hyper={"learning_rate": 1.0}),
                          global_step=step)
    gradient = push.gradients.add(name="t", keyed=True)
    codec.encode(values, gradient.values)
    codec.encode(keys, gradient.indices)
    stub.Push(push, timeout=30)


def freshness(address, stub, keys_per_step, seconds):
    """Seconds from a push's answer to a follower holding the row it changed, while another
    thread pushes --keys keys at a time."""
    follower = ShardFollower(address).start()
    follower.wait_synced(30)
    stop = threading.Event()

    def load():
        rng = np.random.default_rng(2)
        while not stop.is_set():
            keys = np.unique(rng.integers(0, 1_000_000, size=keys_per_step))
            push_rows(stub, keys, np.ones((keys.size, DIM), np.float32) * 1e-3)
    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    marker = np.array([-7], dtype=np.int64)
    lags = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        before = follower.lookup("t", marker)[0, 0]
        push_rows(stub, marker, -np.ones((1, DIM), np.float32))  # the row grows by one
        pushed = time.monotonic()
        while follower.lookup("t", marker)[0, 0] < before + 0.5:
            time.sleep(0.002)
        lags.append(time.monotonic() - pushed)
    stop.set()
    thread.join()
    follower.stop()
    lags = np.sort(lags)
    print(f"freshness of a row under pushes (publish period 0.2 s): p50 "
          f"{np.percentile(lags, 50):.3f} s, p99 {np.percentile(lags, 99):.3f} s, max "
          f"{lags[-1]:.3f} s over {lags.size} updates")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--keys", type=int, default=4096)
    args = parser.parse_args()
    changes_since_costs(args.rows)
    publisher_costs(args.seconds, args.keys)


if __name__ == "__main__":
    main()
