"""What the peer implementations share with bench/cluster_model.py: the models, the data, the
batches and the way throughput is measured, and a runner that starts a job's processes on
loopback and stops them once the chief has printed its figure."""

import argparse
import json
import os
import re
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


SAMPLE_S = 0.25
PATTERNS = {"throughput": r"throughput: ([0-9.]+) examples/s", "auc": r"test auc: ([0-9.]+)"}
TIMED_SECONDS = r"throughput: .* in ([0-9.]+) s\)"  # the timed window the throughput covers


def run(commands, timeout=900):
    """Starts one process per (role, command, env); waits for a line `throughput: X` from any
    of them, then stops them all (a peer's processes need not exit by themselves: TF's ps
    tasks never do). Returns X."""
    return run_job(commands, ("throughput",), timeout=timeout, grace=0)["throughput"]


class CpuMeter:
    """The CPU seconds (user and system) a set of processes and all their descendants used,
    read from /proc at each sample(): a process counts with its last sampled time, so one
    that exits between samples loses at most the time since the last one. Descendants stay
    counted when their parent dies first (a forked input reader, a launcher's children)."""

    def __init__(self, pids):
        self.roots = set(pids)
        self.ticks = {}  # (pid, start time) -> utime + stime
        self.history = []  # (monotonic time, seconds()) at each sample

    def sample(self):
        stats = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    text = f.read()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()  # fields[0] is field 3, state
            stats[int(entry.name)] = (int(fields[1]), int(fields[19]),
                                      int(fields[11]) + int(fields[12]))
        children = {}
        for pid, (ppid, _, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        todo = [pid for pid in self.roots if pid in stats]
        todo += [pid for pid, start in self.ticks if stats.get(pid, (0, None))[1] == start]
        seen = set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            _, start, ticks = stats[pid]
            self.ticks[(pid, start)] = max(ticks, self.ticks.get((pid, start), 0))
            todo.extend(children.get(pid, ()))
        self.roots -= {pid for pid, _ in self.ticks}
        self.history.append((time.monotonic(), self.seconds()))

    def seconds(self):
        return sum(self.ticks.values()) / os.sysconf("SC_CLK_TCK")

    def seconds_at(self, when):
        """The CPU seconds used up to the monotonic time `when`, interpolated between
        samples."""
        before = [(t, c) for t, c in self.history if t <= when] or self.history[:1]
        after = [(t, c) for t, c in self.history if t >= when] or self.history[-1:]
        (t0, c0), (t1, c1) = before[-1], after[0]
        return c0 if t1 <= t0 else c0 + (c1 - c0) * (when - t0) / (t1 - t0)


def run_job(commands, wanted=("throughput", "auc"), timeout=1800, grace=60, env=None):
    """Starts one process per (role, command, env) and reads their output until each of the
    `wanted` figures (keys of PATTERNS) was printed; then gives the processes whose role does
    not start with "ps" `grace` seconds to exit by themselves and stops the rest (TF's ps tasks
    serve on forever). Returns the figures, `cpu_seconds`, the CPU time every process of the
    job and every process they started used (CpuMeter, sampled every SAMPLE_S), and, when the
    throughput line names its timed seconds S, `timed_cpu_seconds` (the CPU time of the S
    seconds before that line) and `timed_examples` (X times S). `env` is added to each
    process's environment (default: single_thread_env())."""
    processes, figures, tail, timed = [], {}, [], None
    try:
        for role, command, own_env in commands:
            processes.append((role, subprocess.Popen(
                command, env={**os.environ, **(single_thread_env() if env is None else env),
                              **own_env},
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
        meter = CpuMeter(p.pid for _, p in processes)
        meter.sample()
        deadline = time.monotonic() + timeout
        found_at = None
        selector = selectors.DefaultSelector()
        for role, process in processes:
            selector.register(process.stdout, selectors.EVENT_READ, role)
        while time.monotonic() < deadline:
            if found_at is not None and time.monotonic() >= found_at + grace:
                break
            for key, _ in selector.select(timeout=SAMPLE_S):
                line = key.fileobj.readline()
                if not line:
                    selector.unregister(key.fileobj)
                    continue
                tail = (tail + [f"[{key.data}] {line.rstrip()}"])[-40:]
                for name in wanted:
                    found = re.search(PATTERNS[name], line)
                    if found and name not in figures:
                        figures[name] = float(found.group(1))
                        window = re.search(TIMED_SECONDS, line)
                        if name == "throughput" and window:
                            meter.sample()
                            timed = (time.monotonic(), float(window.group(1)))
            meter.sample()
            if found_at is None and len(figures) == len(wanted):
                found_at = time.monotonic()
            # The workers are done once they exited and their output is read to its end.
            reading = {key.data for key in selector.get_map().values()}
            if all(p.poll() is not None and role not in reading
                   for role, p in processes if not role.startswith("ps")):
                break
        if len(figures) < len(wanted):
            raise RuntimeError(f"the job printed no {' or '.join(set(wanted) - set(figures))} "
                               f"(exit codes {[p.poll() for _, p in processes]}):\n"
                               + "\n".join(tail))
        meter.sample()
        figures["cpu_seconds"] = meter.seconds()
        if timed:
            end, seconds = timed
            figures["timed_cpu_seconds"] = meter.seconds_at(end) - meter.seconds_at(end - seconds)
            figures["timed_examples"] = figures["throughput"] * seconds
        return figures
    finally:
        for _, process in processes:
            if process.poll() is None:
                process.kill()
        for _, process in processes:
            process.wait()
            process.stdout.close()


def cpu_per_1000(figures, examples):
    """(timed, whole job): run_job's CPU seconds per 1,000 examples over the timed steps, and
    over the whole job of `examples` trained."""
    return (figures["timed_cpu_seconds"] / (figures["timed_examples"] / 1000),
            figures["cpu_seconds"] / (examples / 1000))


class MissingPeer(RuntimeError):
    """A peer's interpreter lacks the peer's library (a bench script may skip that peer)."""


def python(variable="PSFLOW_PEERS_PYTHON", module=None):
    """The interpreter with the peers' libraries: the one the environment variable `variable`
    names, else this one. With `module`, that interpreter must find the module, else
    MissingPeer says which variable to set."""
    interpreter = os.environ.get(variable) or sys.executable
    if module is None:
        return interpreter
    check = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    try:
        found = subprocess.run([interpreter, "-c", check], capture_output=True,
                               timeout=60).returncode == 0
    except OSError:
        found = False
    if not found:
        named = f"{variable}={os.environ[variable]}" if os.environ.get(variable) else \
            f"{variable} is not set and {interpreter}"
        raise MissingPeer(f"{named} has no {module}: set {variable} to an interpreter "
                          f"with {module}")
    return interpreter


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


def tf_cluster_commands(script, python, workers, ps, *args):
    """The (role, command, env) of every task of a TensorFlow job on loopback: `script` run by
    `python` with --task, --index, --cluster (a ClusterSpec's JSON) and `args`."""
    ports = free_ports(ps + workers)
    cluster = json.dumps({"ps": [f"127.0.0.1:{p}" for p in ports[:ps]],
                          "worker": [f"127.0.0.1:{p}" for p in ports[ps:]]})
    return [(f"{role}{i}", [python, str(script), "--task", role, "--index", str(i), "--cluster",
                            cluster, *map(str, args)], {})
            for role, count in (("ps", ps), ("worker", workers)) for i in range(count)]


def tf_server(tf, args):
    """This task's (ClusterSpec, ConfigProto, Server) for TF1's PS runtime; a ps task serves
    until it is stopped and gets None."""
    cluster = tf.train.ClusterSpec(json.loads(args.cluster))
    config = tf.ConfigProto(device_filters=["/job:ps", f"/job:worker/task:{args.index}"])
    server = tf.train.Server(cluster, job_name=args.role, task_index=args.index, config=config)
    if args.role == "ps":
        server.join()
        return None
    return cluster, config, server
