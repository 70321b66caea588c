"""A parameter-server process under hostile and heavy input, with the figures that must hold:

- fuzz: random bytes and random mutations of a valid request, N per method (10k by
  default): calls by status code; INTERNAL and UNKNOWN must be 0, the process alive, its
  variable whole;
- pull amplification: one Pull naming a 64 MiB variable 40 times: the growth of the server's
  peak RSS (VmHWM), which must stay near one copy, not 40;
- concurrent pushes: 32 threads x 200 pushes of ones with SGD at learning rate 1: the
  variable must end at exactly -6400.

    python bench/hostile.py [--per-method 10000]
"""

import argparse
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb
from psflow.proto import psflow_pb2_grpc as pb_grpc

SGD = pb.UpdateRule(name="sgd", hyper={"learning_rate": 1.0})
TIMEOUT = 30


def valid_requests():
    """A valid request of each method, to mutate."""
    push = pb.PushRequest(rule=SGD, pull=["w"], worker=0)
    codec.encode(np.ones((2, 3), np.float32), push.gradients.add(name="w").values)
    init = pb.InitializeVariablesRequest()
    codec.encode(np.ones((2, 3), np.float32), init.values.add(name="w").tensor)
    return {
        "DeclareVariables": pb.DeclareVariablesRequest(variables=[
            pb.VariableSpec(name="w", dtype="float32", shape=[2, 3])]),
        "InitializeVariables": init,
        "WaitInitialized": pb.WaitInitializedRequest(names=["w"], timeout_ms=1),
        "Pull": pb.PullRequest(names=["w"]),
        "Push": push,
        "RegisterWorker": pb.WorkerRequest(task_index=1),
        "Heartbeat": pb.HeartbeatRequest(task_index=1, local_step=3),
        "WorkerDone": pb.WorkerRequest(task_index=5),
        "GetStats": pb.StatsRequest(),
        "SaveShard": pb.SaveShardRequest(path="/nowhere/x.npz"),
        # A lone server takes no forwarded write. (InstallChain is left out: a chain it
        # accepted would make the server refuse the writes of the figures below.)
        "Forward": pb.ForwardRequest(epoch=1, seq=1, method="Push",
                                     request=push.SerializeToString()),
    }


def mutate(data, rng):
    """`data` with 1 to 4 random byte changes, cuts, insertions or a whole random
    replacement."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(4)
        if kind == 0 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 1 and data:
            start = rng.randrange(len(data))
            del data[start:start + rng.randint(1, 8)]
        elif kind == 2:
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.randint(1, 8))
        else:
            data = bytearray(rng.randbytes(rng.randint(0, 64)))
    return bytes(data)


def raw(channel, method):
    """`method` taking and returning bytes."""
    return channel.unary_unary(f"/psflow.ParameterServer/{method}", request_serializer=None,
                               response_deserializer=None)


def fuzz(channel, per_method, seed=0):
    """{method: {status code name: calls}} for `per_method` mutated requests of each method."""
    rng = random.Random(seed)
    seen = {}
    for method, request in valid_requests().items():
        call, valid, counts = raw(channel, method), request.SerializeToString(), {}
        for _ in range(per_method):
            try:
                call(mutate(valid, rng), timeout=TIMEOUT)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
            counts[code] = counts.get(code, 0) + 1
        seen[method] = counts
    return seen


def start_ps(folder):
    port_file = Path(folder) / "ps.port"
    process = subprocess.Popen([sys.executable, "-m", "psflow.ps", "--task-index", "0",
                                "--num-workers", "1000", "--port-file", str(port_file),
                                "--checkpoint-root", str(folder), "--log-level", "ERROR"],
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the parameter server did not start")
        time.sleep(0.05)
    return process, int(port_file.read_text())


def peak_rss_mb(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def declare_and_set(stub, name, value):
    stub.DeclareVariables(pb.DeclareVariablesRequest(variables=[
        pb.VariableSpec(name=name, dtype=value.dtype.name, shape=value.shape)]), timeout=TIMEOUT)
    request = pb.InitializeVariablesRequest(overwrite=True)
    codec.encode(value, request.values.add(name=name).tensor)
    stub.InitializeVariables(request, timeout=TIMEOUT)


def value_of(stub, name):
    reply = stub.Pull(pb.PullRequest(names=[name]), timeout=TIMEOUT)
    return codec.decode(reply.values[0].tensor)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-method", type=int, default=10000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        process, port = start_ps(folder)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=codec.CHANNEL_OPTIONS) as ch:
                stub = pb_grpc.ParameterServerStub(ch)
                declare_and_set(stub, "w", np.ones((2, 3), np.float32))
                started = time.monotonic()
                seen = fuzz(ch, args.per_method)
                total = {}
                for method, counts in seen.items():
                    print(f"fuzz {method:<20} " + ", ".join(
                        f"{code} {n}" for code, n in sorted(counts.items())))
                    for code, n in counts.items():
                        total[code] = total.get(code, 0) + n
                bad = total.get("INTERNAL", 0) + total.get("UNKNOWN", 0)
                alive = process.poll() is None
                whole = value_of(stub, "w").shape == (2, 3)
                print(f"fuzz: {sum(total.values())} calls in {time.monotonic() - started:.0f} s,"
                      f" INTERNAL/UNKNOWN {bad}, server alive {alive}, variable whole {whole}")

                big = np.zeros(16 * 1024 * 1024, np.float32)  # 64 MiB
                declare_and_set(stub, "big", big)
                del big
                before = peak_rss_mb(process.pid)
                reply = raw(ch, "Pull")(pb.PullRequest(names=["big"] * 40).SerializeToString(),
                                        timeout=TIMEOUT)
                after = peak_rss_mb(process.pid)
                print(f"pull amplification: a Pull naming a 64 MiB variable 40 times answered "
                      f"{len(reply) / 2**20:.0f} MiB; the server's peak RSS grew "
                      f"{after - before:.0f} MiB ({before:.0f} -> {after:.0f})")

                declare_and_set(stub, "c", np.zeros(4, np.float32))
                errors = []

                def pusher():
                    request = pb.PushRequest(rule=SGD)
                    codec.encode(np.ones(4, np.float32), request.gradients.add(name="c").values)
                    try:
                        for _ in range(200):
                            stub.Push(request, timeout=TIMEOUT)
                    except grpc.RpcError as exc:
                        errors.append(exc)

                threads = [threading.Thread(target=pusher) for _ in range(32)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                final = value_of(stub, "c")
                exact = not errors and bool((final == -6400).all())
                print(f"concurrent pushes 32 x 200: {final.tolist()} (exact: {exact})")
        finally:
            process.terminate()
            process.wait(10)
    return 0 if bad == 0 and alive and whole and exact else 1


if __name__ == "__main__":
    sys.exit(main())
