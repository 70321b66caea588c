"""What the peer implementations share with bench/cluster_model.py: the models, the data, the
batches and the way throughput is measured, and a runner that starts a job's processes on
loopback and stops them once the chief has printed its figure."""

import argparse
import os
import re
import resource
import selectors
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


PATTERNS = {"throughput": r"throughput: ([0-9.]+) examples/s", "auc": r"test auc: ([0-9.]+)"}


def run(commands, timeout=900):
    """Starts one process per (role, command, env); waits for a line `throughput: X` from any
    of them, then stops them all (a peer's processes need not exit by themselves: TF's ps
    tasks never do). Returns X."""
    return run_job(commands, ("throughput",), timeout=timeout, grace=0)["throughput"]


def run_job(commands, wanted=("throughput", "auc"), timeout=1800, grace=60):
    """Starts one process per (role, command, env) and reads their output until each of the
    `wanted` figures (keys of PATTERNS) was printed; then gives the processes whose role does
    not start with "ps" `grace` seconds to exit by themselves and stops the rest (TF's ps tasks
    serve on forever). Returns the figures and `cpu_seconds`, the CPU time (user and system)
    every process of the job used, with the processes they waited for (a launcher's
    children), from the rusage of reaped children."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    processes, figures, tail = [], {}, []
    try:
        for role, command, env in commands:
            processes.append((role, subprocess.Popen(
                command, env={**os.environ, **single_thread_env(), **env},
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
        deadline = time.monotonic() + timeout
        selector = selectors.DefaultSelector()
        for role, process in processes:
            selector.register(process.stdout, selectors.EVENT_READ, role)
        while time.monotonic() < deadline and len(figures) < len(wanted):
            for key, _ in selector.select(timeout=1.0):
                line = key.fileobj.readline()
                if not line:
                    selector.unregister(key.fileobj)
                    continue
                tail = (tail + [f"[{key.data}] {line.rstrip()}"])[-40:]
                for name in wanted:
                    found = re.search(PATTERNS[name], line)
                    if found and name not in figures:
                        figures[name] = float(found.group(1))
            # The workers are done once they exited and their output is read to its end.
            reading = {key.data for key in selector.get_map().values()}
            if all(p.poll() is not None and role not in reading
                   for role, p in processes if not role.startswith("ps")):
                break
        if len(figures) < len(wanted):
            raise RuntimeError(f"the job printed no {' or '.join(set(wanted) - set(figures))} "
                               f"(exit codes {[p.poll() for _, p in processes]}):\n"
                               + "\n".join(tail))
        stop_at = time.monotonic() + grace
        for role, process in processes:
            if not role.startswith("ps"):
                try:
                    process.wait(timeout=max(0.0, stop_at - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
    finally:
        for _, process in processes:
            if process.poll() is None:
                process.kill()
        for _, process in processes:
            process.wait()
            process.stdout.close()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    figures["cpu_seconds"] = (after.ru_utime - before.ru_utime) + \
        (after.ru_stime - before.ru_stime)
    return figures


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
