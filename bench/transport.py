"""The wire alone, and a parameter server's memory.

Round trip: one worker pushes a gradient for every variable of the wide MLP (64-2048-2048-10,
17 MB of float32) and gets the new values back in the same call, as an async training step
does, against a `python -m psflow.ps` process on this host: through the same-host lane and
through gRPC. The baseline, measured in the same run: the same bytes sent to another process
over raw loopback TCP and the same bytes sent back (numpy buffers, sendall/recv_into). Each
figure is bytes moved (both ways) per second, best of --repeat rounds.

Memory: the parameter server's resident set (VmRSS, and its peak VmHWM) a moment after the
rounds, for the wide MLP trained with SGD (no slots) and with Adam (two slots per variable),
and for the digits MLP with SGD, against its budget: 100 MB + 1.2x the bytes of its
variables and slots; and how much of the resident set is the same-host lane's shared regions
(a push's and a reply's size), which the worker maps and counts too.

    python bench/transport.py [--rounds 30] [--repeat 3]
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from psflow.proto import codec, wire
from psflow.proto import psflow_pb2 as pb
from psflow.worker.client import ShardClient, worker_request

MODELS = {"mlp": (64, 256, 256, 10), "wide": (64, 2048, 2048, 10)}
RULES = {"sgd": pb.UpdateRule(name="sgd", hyper={"learning_rate": 1e-6}),
         "adam": pb.UpdateRule(name="adam", hyper={"learning_rate": 1e-6})}
SLOTS = {"sgd": 0, "adam": 2}  # slot arrays the size of the variable
IDLE_S = 1.5  # between the rounds and the reading: the server gives back what is free


def shapes(model):
    sizes = MODELS[model]
    found = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        found[f"w{i}"] = (fan_in, fan_out)
        found[f"b{i}"] = (fan_out,)
    return found


def start_ps(tmp):
    port_file = Path(tmp) / f"ps-{time.monotonic_ns()}.port"
    process = subprocess.Popen([sys.executable, "-m", "psflow.ps", "--task-index", "0",
                                "--num-workers", "1", "--port", "0", "--port-file",
                                str(port_file), "--log-level", "WARNING"])
    deadline = time.monotonic() + 30
    while not port_file.exists() or not port_file.read_text().strip():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the parameter server did not start")
        time.sleep(0.05)
    return process, f"127.0.0.1:{int(port_file.read_text())}"


def memory(pid):
    """(VmRSS, VmHWM, RssShmem) of process `pid`, in bytes. RssShmem is the part of the
    resident set in shared memory: the lane's regions, which the worker maps too."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return tuple(int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM", "RssShmem"))


def prepare(client, model):
    variables = shapes(model)
    client.call("DeclareVariables", pb.DeclareVariablesRequest(variables=[
        pb.VariableSpec(name=n, dtype="float32", shape=s) for n, s in variables.items()]))
    request = pb.InitializeVariablesRequest()
    rng = np.random.default_rng(0)
    for name, shape in variables.items():
        codec.encode(rng.standard_normal(shape).astype(np.float32),
                     request.values.add(name=name).tensor)
    client.call("InitializeVariables", request)
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in variables.items()}


def step(client, gradients, rule):
    request = wire.PushBuilder(worker=0, global_step=0)
    request.rule.CopyFrom(rule)
    for name, gradient in gradients.items():
        request.add_gradient(name, 0, gradient)
    request.pull.extend(gradients)
    reply = client.call("Push", request)
    assert len(reply.values) == len(gradients)


def round_trips(client, gradients, rule, rounds):
    """Bytes per second of `rounds` push+pull calls (both directions)."""
    step(client, gradients, rule)  # warm
    before = client.sent + client.received
    start = time.perf_counter()
    for _ in range(rounds):
        step(client, gradients, rule)
    return (client.sent + client.received - before) / (time.perf_counter() - start)


ECHO = """
import socket, sys
import numpy as np
size = int(sys.argv[1])
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1)
print(listener.getsockname()[1], flush=True)
conn, _ = listener.accept()
buf = np.empty(size, np.uint8)
view = memoryview(buf)
while True:
    got = 0
    while got < size:
        n = conn.recv_into(view[got:], size - got)
        if n == 0:
            sys.exit(0)
        got += n
    conn.sendall(view)
"""


def raw_tcp(size, rounds):
    """Bytes per second of `rounds` times `size` bytes to another process over loopback TCP
    and back."""
    process = subprocess.Popen([sys.executable, "-c", ECHO, str(size)], stdout=subprocess.PIPE,
                               text=True)
    try:
        port = int(process.stdout.readline())
        sock = socket.create_connection(("127.0.0.1", port))
        out = np.ones(size, np.uint8)
        back = np.empty(size, np.uint8)
        view = memoryview(back)

        def once():
            sock.sendall(memoryview(out))
            got = 0
            while got < size:
                got += sock.recv_into(view[got:], size - got)

        once()
        start = time.perf_counter()
        for _ in range(rounds):
            once()
        seconds = time.perf_counter() - start
        sock.close()
        return 2 * size * rounds / seconds
    finally:
        process.kill()
        process.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        process, address = start_ps(tmp)
        try:
            client = ShardClient(0, address)
            client.call("RegisterWorker", worker_request(0))
            if client.lane is None:
                print("(this host offers no same-host lane: both rows go through gRPC)")
            lane = client.lane
            gradients = prepare(client, "wide")
            size = sum(g.nbytes for g in gradients.values())
            best = {"raw TCP": 0.0, "psflow lane": 0.0, "psflow gRPC": 0.0}
            for _ in range(args.repeat):  # alternating, so a slow spell hits all alike
                best["raw TCP"] = max(best["raw TCP"], raw_tcp(size, args.rounds))
                client.lane = lane
                best["psflow lane"] = max(best["psflow lane"], round_trips(
                    client, gradients, RULES["sgd"], args.rounds))
                client.lane = None
                best["psflow gRPC"] = max(best["psflow gRPC"], round_trips(
                    client, gradients, RULES["sgd"], args.rounds))
            client.lane = lane
            print(f"push+pull round trip of {size / 1e6:.1f} MB (wide MLP), "
                  f"bytes both ways per second")
            for name, rate in best.items():
                print(f"  {name:<12} {rate / 1e9:6.2f} GB/s  {rate / best['raw TCP']:5.2f}x "
                      f"raw TCP")
            client.close()
        finally:
            process.kill()
            process.wait()
        print("parameter server memory after the rounds (budget: 100 MB + 1.2x variables "
              "and slots)")
        for model, rule in (("mlp", "sgd"), ("wide", "sgd"), ("wide", "adam")):
            process, address = start_ps(tmp)
            try:
                client = ShardClient(0, address)
                client.call("RegisterWorker", worker_request(0))
                gradients = prepare(client, model)
                for _ in range(args.rounds):
                    step(client, gradients, RULES[rule])
                held = sum(g.nbytes for g in gradients.values()) * (1 + SLOTS[rule])
                time.sleep(IDLE_S)
                rss, peak, shared = memory(process.pid)
                budget = 100e6 + 1.2 * held
                print(f"  {model:<5} {rule:<5} variables+slots {held / 1e6:6.1f} MB  "
                      f"budget {budget / 1e6:6.1f} MB  RSS {rss / 1e6:6.1f} MB "
                      f"({rss / budget:4.2f}x budget)  peak {peak / 1e6:6.1f} MB "
                      f"({peak / budget:4.2f}x)  of the RSS shared with the worker "
                      f"{shared / 1e6:5.1f} MB")
                client.close()
            finally:
                process.kill()
                process.wait()


if __name__ == "__main__":
    main()
