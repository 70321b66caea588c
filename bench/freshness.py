"""Live parameters, measured while a CTR job trains at full speed (bench/freshness_job.py: the
model of bench/serve_model.py, 2 workers / 2 parameter servers). Every figure is printed with
its target, met or not:

- freshness of table rows: a probe row's update pushed to a training parameter server, to the
  moment a reader sees it, (a) in a follower of the job in this process (what
  `psflow-serve --follow` reads) and (b) through the serving parameter tier (psflow-params,
  2 replicas per shard, read as `psflow-serve --params_shard` reads it, its 250 ms row cache
  included): p50 <= 1 s, p99 <= 3 s;
- dense variables: a probe variable's update to the moment each reader sees it: within the
  parameter servers' dense period + 1 s;
- a tier replica cut off (SIGSTOP) for --cutoff seconds, then resumed: how long until it
  answers with a value pushed after it resumed;
- kill -9 one tier replica of each shard under --rate predict requests/s to psflow-serve
  (gRPC, open loop, bench/serve_load.py; its row cache at --cache-ms), once the job has
  stopped (the tier serves on with the last state it had): 0 failed predictions;
- the cost of following: the job's CPU seconds per 1,000 examples with 1 and 4 followers
  (psflow-params processes) per shard against none: <= 1.05x.

    python bench/freshness.py [--rows 200000] [--probes 100] [--cutoff 30] [--rate 500]
"""

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import serve_model as model
from serve_processes import free_port, wait_available

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
import common  # noqa: E402

from psflow.key_index import shard_of_keys  # noqa: E402
from psflow.proto import codec, wire  # noqa: E402
from psflow.proto import psflow_pb2 as pb  # noqa: E402
from psflow.serving.param_follower import JobFollower  # noqa: E402
from psflow.serving.remote_params import RemoteParams  # noqa: E402
from psflow.worker.client import ShardClient  # noqa: E402

HERE = Path(__file__).resolve().parent
TABLE = "embedding"
PROBE_VARIABLE = "freshness/probe"
DENSE_PERIOD = 5.0  # the parameter servers' default --dense-period
results = []


def report(name, value, unit, target=None, met=None):
    mark = "" if met is None else ("  met" if met else "  NOT MET")
    results.append((name, met))
    print(f"{name:<64} {value:>9.3f} {unit}" + (f"   target {target}{mark}" if target else ""),
          flush=True)


def launch(seconds, rows, ps_port, out):
    command = [sys.executable, "-m", "psflow.launcher", "--no-progress", "--workers", "2",
               "--ps", "2", "--ps-port", str(ps_port), str(HERE / "freshness_job.py"),
               "--rows", str(rows), "--seconds", str(seconds)]
    return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, **common.single_thread_env()})


def start_params(address, folder, name):
    """A psflow-params process following `address`: (process, its address)."""
    port_file = Path(folder) / f"{name}.port"
    log = open(Path(folder) / f"{name}.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "psflow.serving.params_server",
                                f"--follow={address}", "--port=0", f"--port-file={port_file}"],
                               stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"psflow-params {name} did not start: see {log.name}")
        time.sleep(0.05)
    return process, f"127.0.0.1:{int(port_file.read_text())}"


class Probe:
    """Updates a probe row (a key the job never reads, on shard 0) and a probe variable (on
    shard 0) on the training parameter servers, as a worker's pushes do."""

    def __init__(self, addresses):
        candidates = -(1 << 50) - np.arange(64, dtype=np.int64)  # keys the job never reads
        self.key = candidates[shard_of_keys(candidates, len(addresses)) == 0][:1]
        self.clients = [ShardClient(i, a) for i, a in enumerate(addresses)]
        self.table_shard = self.clients[0]
        request = pb.PullRowsRequest()
        codec.encode(self.key, request.keys.add(name=TABLE, train=True).keys)
        self.row = float(self.table_shard.call("PullRows", request).values[0].array[0, 0])
        self.dense_shard = self.clients[0]
        self.dense_shard.call("DeclareVariables", pb.DeclareVariablesRequest(
            variables=[pb.VariableSpec(name=PROBE_VARIABLE, dtype="float32", shape=[4])]))
        init = pb.InitializeVariablesRequest(overwrite=True)
        codec.encode(np.zeros(4, np.float32), init.values.add(name=PROBE_VARIABLE).tensor)
        self.dense_shard.call("InitializeVariables", init)
        self.value = 0.0

    def _push(self, client, name, values, indices=None):
        push = wire.PushBuilder(worker=0)
        push.rule.name = "sgd"
        push.rule.hyper["learning_rate"] = 1.0
        push.add_gradient(name, 0, values, indices, keyed=indices is not None)
        client.call("Push", push)

    def bump_row(self):
        """Adds 1 to the probe row; returns its new first value."""
        self._push(self.table_shard, TABLE, -np.ones((1, model.DIM), np.float32), self.key)
        self.row += 1.0
        return self.row

    def bump_variable(self):
        self._push(self.dense_shard, PROBE_VARIABLE, -np.ones(4, np.float32))
        self.value += 1.0
        return self.value


def seen_within(readers, expected, timeout=15.0):
    """{reader name: seconds until read() >= expected - 1e-4} for {name: read}, polled every
    millisecond; None for one that never showed it within `timeout`."""
    started = time.monotonic()
    seen = {}
    while len(seen) < len(readers) and time.monotonic() - started < timeout:
        for name, read in readers.items():
            if name not in seen:
                try:
                    if read() >= expected - 1e-4:
                        seen[name] = time.monotonic() - started
                except Exception:  # noqa: BLE001 -- a reader not synced yet reads as not seen
                    pass
        time.sleep(0.001)
    return {name: seen.get(name) for name in readers}


def percentiles(name, latencies, p50_target, p99_target):
    got = [x for x in latencies if x is not None]
    lost = len(latencies) - len(got)
    ms = np.array(got) if got else np.array([np.inf])
    p50, p99 = np.percentile(ms, 50), np.percentile(ms, 99)
    report(f"{name}: p50", p50, "s", f"<= {p50_target} s", bool(p50 <= p50_target) and not lost)
    report(f"{name}: p99", p99, "s", f"<= {p99_target} s", bool(p99 <= p99_target) and not lost)
    if lost:
        report(f"{name}: updates never seen", lost, "", "0", False)


def freshness(args, folder):
    ps_port = free_port()
    addresses = [f"127.0.0.1:{ps_port + i}" for i in range(2)]
    job_log = open(Path(folder) / "job.log", "w")
    job = launch(args.job_seconds, args.rows, ps_port, job_log)
    processes = []
    try:
        follower = JobFollower(addresses)
        deadline = time.monotonic() + 120
        while not (follower.wait_synced(1.0) and all(s.has_table(TABLE)
                                                      for s in follower.shards)):
            if job.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the job did not start training: see {job_log.name}")
        tier = []
        for shard, address in enumerate(addresses):
            replicas = [start_params(address, folder, f"params-{shard}-{r}") for r in range(2)]
            processes += [p for p, _ in replicas]
            tier.append([a for _, a in replicas])
        params = RemoteParams(tier, cache_ttl=0.25, dense_period=1.0)
        probe = Probe(addresses)
        print(f"probing while the job trains ({args.probes} row updates)", flush=True)
        readers = {"follower": lambda: follower.lookup(TABLE, probe.key)[0, 0],
                   "tier": lambda: params.lookup(TABLE, probe.key)[0, 0]}
        rows = {name: [] for name in readers}
        for _ in range(args.probes):
            seen = seen_within(readers, probe.bump_row())
            for name, seconds in seen.items():
                rows[name].append(seconds)
            time.sleep(np.random.default_rng().uniform(0.05, 0.25))
        percentiles("rows, training PS -> follower in the predict server", rows["follower"],
                    1, 3)
        percentiles("rows, training PS -> serving tier (psflow-params)", rows["tier"], 1, 3)
        dense_readers = {"follower": lambda: follower.dense(PROBE_VARIABLE)[0],
                         "tier": lambda: params.dense(PROBE_VARIABLE)[0]}
        dense = {name: [] for name in dense_readers}
        for _ in range(args.dense_probes):
            seen = seen_within(dense_readers, probe.bump_variable(), DENSE_PERIOD + 10)
            for name, seconds in seen.items():
                dense[name].append(seconds)
        for name, got in dense.items():
            worst = max((x for x in got if x is not None), default=float("inf"))
            ok = None not in got and worst <= DENSE_PERIOD + 1
            report(f"dense variable -> {name}: slowest of {len(got)}", worst, "s",
                   f"<= {DENSE_PERIOD:g} + 1 s", ok)
        cutoff(args, probe, processes[1], tier[0][1])
        # Training ends here: the tier serves on with the last state it had.
        job.send_signal(signal.SIGTERM)
        job.wait(120)
        kill_under_load(args, folder, tier, processes)
        follower.stop()
        params.close()
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        if job.poll() is None:
            job.send_signal(signal.SIGTERM)
        job.wait(120)


def cutoff(args, probe, process, address):
    """Stops a tier replica of shard 0 (which holds the probe row) for args.cutoff seconds
    while the job trains, resumes it, and times how long until it answers with a value
    pushed after it resumed."""
    print(f"cutting replica 1 of shard 0 off for {args.cutoff:g} s", flush=True)
    process.send_signal(signal.SIGSTOP)
    time.sleep(args.cutoff)
    process.send_signal(signal.SIGCONT)
    resumed = time.monotonic()
    alone = RemoteParams([[address]], cache_ttl=0, deadline=2.0)  # that replica only
    expected = probe.bump_row()
    seen = seen_within({"cut": lambda: alone.lookup(TABLE, probe.key)[0, 0]}, expected,
                       60)["cut"]
    took = time.monotonic() - resumed if seen is not None else float("inf")
    report(f"replica cut off {args.cutoff:g} s: answers with current values after", took, "s",
           "catches up", seen is not None)
    alone.close()


def kill_under_load(args, folder, tier, processes):
    """psflow-serve reading from the tier, predict requests at args.rate/s, and kill -9 of
    replica 0 of each shard halfway through; counts failed predictions."""
    base = Path(folder) / "ctr"
    model.export(str(base / "1"), args.rows)
    grpc_port, rest_port = free_port(), free_port()
    log = open(Path(folder) / "serve.log", "w")
    serve = subprocess.Popen(
        [sys.executable, "-m", "psflow.serving", f"--port={grpc_port}",
         f"--rest_api_port={rest_port}", "--model_name=ctr", f"--model_base_path={base}",
         "--params_deadline_ms=200", f"--params_cache_ttl_ms={args.cache_ms:g}"]
        + [f"--params_shard={','.join(s)}" for s in tier],
        stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, **common.single_thread_env()})
    try:
        wait_available(rest_port, timeout=120, process=serve)
        # Requests of one row each, Zipf-drawn ids: hot keys come from the row cache, the
        # others from the tier.
        requests = []
        ids, dense = model.rows_of(args.rows, args.requests, seed=3)
        for k in range(args.requests):
            requests += ["--request", str(Path(folder) / f"request-{k}.bin")]
            Path(requests[-1]).write_bytes(
                model.predict_request(ids[k:k + 1], dense[k:k + 1]).SerializeToString())
        load_command = [sys.executable, str(HERE / "serve_load.py"), "--target",
                        f"127.0.0.1:{grpc_port}", *requests, "--seconds"]
        capacity = json.loads(subprocess.run(
            load_command + ["5", "--concurrency", "16"], capture_output=True, text=True,
            check=True).stdout.strip().splitlines()[-1])
        report("psflow-serve reading the tier, 16 requests in flight", capacity["rps"],
               "req/s")
        load = subprocess.Popen(load_command + [str(args.load_seconds), "--rate",
                                                str(args.rate)], stdout=subprocess.PIPE,
                                text=True)
        time.sleep(args.load_seconds / 2)
        for process in (processes[0], processes[2]):  # replica 0 of each shard
            process.kill()
        out, _ = load.communicate(timeout=args.load_seconds + 60)
        figures = json.loads(out.strip().splitlines()[-1])
        failed = sum(figures.get("errors", {}).values())
        report(f"kill -9 a replica of each shard at {args.rate:g}/s: failed predictions",
               failed, f"of {figures['requests'] + failed}", "0", failed == 0)
        if failed:
            print(f"  errors by code: {figures['errors']}; the server's last lines:", flush=True)
            log.flush()
            print("".join(open(log.name).readlines()[-12:]), flush=True)
        report("  predict p99 around the kills", figures["p99_ms"], "ms")
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(60)


def cost(args, folder):
    """The job's CPU per 1,000 examples with 0, 1 and 4 followers per shard."""
    figures = {}
    for round_ in range(args.rounds):
        for count in (0, 1, 4):
            ps_port = free_port()
            addresses = [f"127.0.0.1:{ps_port + i}" for i in range(2)]
            command = [sys.executable, "-m", "psflow.launcher", "--no-progress", "--workers",
                       "2", "--ps", "2", "--ps-port", str(ps_port),
                       str(HERE / "freshness_job.py"), "--rows", str(args.rows), "--seconds",
                       str(args.cost_seconds)]
            followers = [subprocess.Popen(
                [sys.executable, "-m", "psflow.serving.params_server", f"--follow={a}",
                 "--port=0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for a in addresses for _ in range(count)]
            try:
                job = common.run_job([("launcher", command, {})], wanted=("throughput",),
                                     grace=60)
            finally:
                for process in followers:
                    process.kill()
                    process.wait()
            per_1000 = job["timed_cpu_seconds"] / (job["timed_examples"] / 1000)
            print(f"  round {round_ + 1}, {count} follower(s) per shard: "
                  f"{job['throughput']:,.0f} examples/s, {per_1000:.4f} CPU s per 1,000 "
                  "examples", flush=True)
            figures[count] = min(figures.get(count, np.inf), per_1000)
    for count in (1, 4):
        ratio = figures[count] / figures[0]
        report(f"job CPU per 1,000 examples, {count} follower(s) per shard / none", ratio, "x",
               "<= 1.05x", ratio <= 1.05)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="keys per table")
    parser.add_argument("--probes", type=int, default=100, help="row updates timed")
    parser.add_argument("--dense-probes", type=int, default=3, help="variable updates timed")
    parser.add_argument("--cutoff", type=float, default=30.0,
                        help="seconds a tier replica is stopped")
    parser.add_argument("--rate", type=float, default=500.0, help="predict requests/s")
    parser.add_argument("--load-seconds", type=float, default=10.0)
    parser.add_argument("--requests", type=int, default=1000,
                        help="different predict requests the load takes in turn")
    parser.add_argument("--cache-ms", type=float, default=250.0,
                        help="psflow-serve's --params_cache_ttl_ms under load (its default)")
    parser.add_argument("--cost-seconds", type=float, default=30.0,
                        help="training seconds of each job of the cost figure")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the cost figure")
    parser.add_argument("--skip-cost", action="store_true")
    args = parser.parse_args()
    # the job's token, for the launcher's jobs and every reader of them
    os.environ.setdefault("PSFLOW_AUTH_TOKEN", secrets.token_urlsafe(24))
    args.job_seconds = 120 + args.probes * 0.5 + args.dense_probes * (DENSE_PERIOD + 2) \
        + args.cutoff + args.load_seconds
    with tempfile.TemporaryDirectory() as folder:
        freshness(args, folder)
        if not args.skip_cost:
            cost(args, folder)
    unmet = [name for name, met in results if met is False]
    print(f"{len(unmet)} target(s) not met" + (f": {', '.join(unmet)}" if unmet else ""))


if __name__ == "__main__":
    main()
