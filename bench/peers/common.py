"""What the peer implementations share with bench/cluster_model.py: the models, the data, the
batches and the way throughput is measured, and a runner that starts a job's processes on
loopback and stops them once the chief has printed its figure."""

import argparse
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np

MODELS = {"mlp": (64, 256, 256, 10), "wide": (64, 2048, 2048, 10)}
STEPS = {"mlp": (4000, 300), "wide": (300, 30)}  # (global steps, warm-up steps), as psflow's
BATCH = 64
LEARNING_RATE = 0.01


def data(worker, num_workers):
    """The same 4096 random examples as bench/cluster_model.py, this worker's contiguous
    share of them (psflow.worker.data.shard's split)."""
    rng = np.random.default_rng(0)
    features = rng.random((4096, 64), dtype=np.float32)
    targets = rng.integers(0, 10, size=4096)
    bounds = np.linspace(0, len(features), num_workers + 1).astype(int)
    return features[bounds[worker]:bounds[worker + 1]], targets[bounds[worker]:bounds[worker + 1]]


def batches(features, targets):
    """Endless batches in cluster_model.py's order."""
    i = 0
    while True:
        lo = (i * BATCH) % (len(features) - BATCH)
        yield features[lo:lo + BATCH], targets[lo:lo + BATCH]
        i += 1


def throughput_line(steps, seconds, gradients_per_step):
    return (f"throughput: {steps * BATCH * gradients_per_step / seconds:.1f} examples/s "
            f"({steps} steps in {seconds:.2f} s)")


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def single_thread_env():
    return {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


def run(commands, timeout=900):
    """Starts one process per (role, command, env); waits for a line `throughput: X` from any
    of them, then stops them all (a peer's processes need not exit by themselves: TF's ps
    tasks never do). Returns X."""
    processes = []
    try:
        for role, command, env in commands:
            processes.append((role, subprocess.Popen(
                command, env={**os.environ, **single_thread_env(), **env},
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
        deadline = time.monotonic() + timeout
        import selectors
        selector = selectors.DefaultSelector()
        for role, process in processes:
            selector.register(process.stdout, selectors.EVENT_READ, role)
        tail = []
        while time.monotonic() < deadline:
            for key, _ in selector.select(timeout=1.0):
                line = key.fileobj.readline()
                if not line:
                    selector.unregister(key.fileobj)
                    continue
                tail = (tail + [f"[{key.data}] {line.rstrip()}"])[-40:]
                found = re.search(r"throughput: ([0-9.]+) examples/s", line)
                if found:
                    return float(found.group(1))
            # The workers are done once they exited and their output is read to its end;
            # the ps tasks of a peer may serve on forever.
            reading = {key.data for key in selector.get_map().values()}
            if all(p.poll() is not None and role not in reading
                   for role, p in processes if role.startswith("worker")):
                break
        raise RuntimeError("the peer job printed no throughput (exit codes "
                           f"{[p.poll() for _, p in processes]}):\n" + "\n".join(tail))
    finally:
        for _, process in processes:
            if process.poll() is None:
                process.kill()
        for _, process in processes:
            process.wait()


def python():
    """The interpreter with the peers' libraries: PSFLOW_PEERS_PYTHON, else this one."""
    return os.environ.get("PSFLOW_PEERS_PYTHON") or sys.executable


def task_parser():
    """The options both peers' scripts take: a task's role and index, the model, the job's
    size."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", dest="role", choices=["ps", "worker"])
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--model", choices=sorted(MODELS), default="mlp")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ps", type=int, default=1)
    return parser
