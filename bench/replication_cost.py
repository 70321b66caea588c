"""What chain replication costs a push: pushes per second from --pushers threads (each a
worker's async step: a training lookup of --keys keys of a dim-16 table, then the push of
their gradients and of a dense gradient of --dense floats) to one parameter server (R=1),
then to the head of a chain of two (R=2), each replica its own `python -m psflow.ps`
process on 127.0.0.1. Prints each run's pushes/s and per-step latency, the ratio R=2/R=1 and
the target (R=2 keeps at least 0.7x R=1's throughput), met or not. On a shared machine the
figures move with the neighbours' load: the ratio of runs taken back to back is the figure.

    python bench/replication_cost.py [--seconds 5] [--pushers 4] [--keys 512]
        [--dense 100000] [--repeats 2]
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

from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb
from psflow.proto import psflow_pb2_grpc as pb_grpc

TARGET = 0.7
DIM = 16
RULE = pb.UpdateRule(name="adagrad", hyper={"learning_rate": 0.05})


def start_server(folder, name):
    port_file = os.path.join(folder, f"{name}.port")
    if os.path.exists(port_file):  # an earlier run's
        os.remove(port_file)
    process = subprocess.Popen([sys.executable, "-m", "psflow.ps", "--task-index", "0",
                                "--num-workers", "1", "--port", "0", "--port-file", port_file,
                                "--log-level", "WARNING"])
    deadline = time.monotonic() + 30
    while not os.path.exists(port_file):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the parameter server {name} did not start")
        time.sleep(0.05)
    with open(port_file) as f:
        return process, f"127.0.0.1:{int(f.read())}"


def connect(address):
    channel = grpc.insecure_channel(address, options=codec.CHANNEL_OPTIONS)
    grpc.channel_ready_future(channel).result(timeout=30)
    return channel, pb_grpc.ParameterServerStub(channel)


def declare(stub, dense):
    stub.DeclareVariables(pb.DeclareVariablesRequest(
        variables=[pb.VariableSpec(name="w", dtype="float32", shape=[dense])],
        tables=[pb.TableSpec(name="t", dim=DIM, dtype="float32", initializer="random_normal",
                             initializer_params={"stddev": 0.01, "seed": 1})]), timeout=60)
    request = pb.InitializeVariablesRequest()
    codec.encode(np.zeros(dense, np.float32), request.values.add(name="w").tensor)
    stub.InitializeVariables(request, timeout=60)


def pusher(stub, seed, args, until, latencies):
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=args.dense).astype(np.float32)
    grads = rng.normal(size=(args.keys, DIM)).astype(np.float32)
    while time.monotonic() < until:
        keys = np.unique(rng.integers(0, 1 << 20, size=args.keys)).astype(np.int64)
        started = time.perf_counter()
        lookup = pb.PullRowsRequest()
        codec.encode(keys, lookup.keys.add(name="t", train=True).keys)
        stub.PullRows(lookup, timeout=60)
        push = pb.PushRequest(rule=RULE, worker=0)
        gradient = push.gradients.add(name="t", keyed=True)
        codec.encode(grads[:keys.size], gradient.values)
        codec.encode(keys, gradient.indices)
        codec.encode(dense, push.gradients.add(name="w").values)
        stub.Push(push, timeout=60)
        latencies.append(time.perf_counter() - started)


def cpu_seconds(pid):
    """User + system CPU seconds process `pid` used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(replicas, args, folder):
    """(steps per second, median step latency in ms, [each replica's CPU ms per step, head
    first]) of one run against a chain of `replicas`."""
    servers = [start_server(folder, f"r{replicas}-{i}") for i in range(replicas)]
    channels = []
    try:
        addresses = [address for _, address in servers]
        stubs = []
        for address in addresses:
            channel, stub = connect(address)
            channels.append(channel)
            stubs.append(stub)
        if replicas > 1:
            for index in reversed(range(replicas)):  # from the tail up to the head
                stubs[index].InstallChain(pb.ChainConfig(epoch=1, replicas=addresses,
                                                         index=index), timeout=30)
        declare(stubs[0], args.dense)
        latencies = []
        until = time.monotonic() + args.seconds
        threads = [threading.Thread(target=pusher, args=(stubs[0], seed, args, until,
                                                        latencies))
                   for seed in range(args.pushers)]
        cpu = [cpu_seconds(p.pid) for p, _ in servers]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        steps = max(len(latencies), 1)
        cpu = [1000 * (cpu_seconds(p.pid) - before) / steps
               for (p, _), before in zip(servers, cpu, strict=True)]
        return len(latencies) / elapsed, 1000 * float(np.median(latencies)), cpu
    finally:
        for channel in channels:
            channel.close()
        for process, _ in servers:
            process.terminate()
        for process, _ in servers:
            process.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--pushers", type=int, default=4)
    parser.add_argument("--keys", type=int, default=512)
    parser.add_argument("--dense", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"{args.pushers} pushers, steps of a {args.keys}-key lookup + push (dim {DIM}) and "
          f"a dense gradient of {args.dense} floats, {args.seconds:g} s a run, "
          f"{os.cpu_count()} cores (shared)")
    figures = {1: [], 2: []}
    cpus = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            for replicas in (1, 2):
                rate, latency, cpu = run(replicas, args, folder)
                figures[replicas].append(rate)
                cpus[replicas].append(cpu)
                print(f"run {repeat + 1}, R={replicas}: {rate:8.1f} steps/s, median step "
                      f"{latency:6.2f} ms, CPU a step: "
                      + ", ".join(f"{c:5.2f} ms" for c in cpu) + " (head first)")
    best = {r: max(rates) for r, rates in figures.items()}
    ratio = best[2] / best[1]
    verdict = "met" if ratio >= TARGET else "not met"
    print(f"best R=1 {best[1]:.1f} steps/s, best R=2 {best[2]:.1f} steps/s: R=2 keeps "
          f"{ratio:.2f}x of R=1 (target >= {TARGET:.1f}x: {verdict})")
    # With each replica on cores of its own, the busiest replica bounds the throughput.
    lone = min(c[0] for c in cpus[1])
    busiest = min(max(c) for c in cpus[2])
    print(f"CPU a step: R=1 {lone:.2f} ms; R=2's busiest replica {busiest:.2f} ms, so R=2 "
          f"with a machine per replica would keep about {lone / busiest:.2f}x (an estimate, "
          "not a measurement)")


if __name__ == "__main__":
    main()
