"""A new replica catching up with a shard of --rows rows while training goes on: a chain of two
replicas (each a `python -m psflow.ps` process under a chain master process, on 127.0.0.1)
holds a dim-16 table of --rows rows with an Adagrad slot; --trainers threads keep pushing
(training lookups and pushes of --keys keys, at the head, failing over as the chain changes);
then a third replica starts with --join. Prints how long it took from its start until the
master appended it (target <= 60 s for 10M rows), the steps/s of training before and while it
joined, and checks that the newcomer holds the same rows as the head once training stops.

    python bench/ha_catchup.py [--rows 10000000] [--trainers 2] [--keys 512]
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import numpy as np

from psflow.launcher.resources import free_ports
from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb
from psflow.proto import psflow_pb2_grpc as pb_grpc

TARGET_S = 60.0
DIM = 16
RULE = pb.UpdateRule(name="adagrad", hyper={"learning_rate": 0.05})
GROW_KEYS = 250_000  # rows created per training lookup while the table is built


def start(command, port_file=None, log=None):
    process = subprocess.Popen([sys.executable, "-P", *command], stdout=log, stderr=log)
    if port_file is None:
        return process, None
    deadline = time.monotonic() + 60
    while not os.path.exists(port_file):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{' '.join(command)} did not start")
        time.sleep(0.05)
    with open(port_file) as f:
        return process, f"127.0.0.1:{int(f.read())}"


def replica(folder, name, master, join=False, log=None):
    port_file = os.path.join(folder, f"{name}.port")
    return start(["-m", "psflow.ps", "--task-index", "0", "--num-workers", "1",
                  "--port-file", port_file, "--chain-master", master, "--log-level", "INFO",
                  *(["--join"] if join else [])], port_file, log)


class Chain:
    """Shard 0's head, as the master names it, and stubs to any replica."""

    def __init__(self, master):
        self.channel = grpc.insecure_channel(master)
        self.get = self.channel.unary_unary(
            "/psflow.ChainMaster/GetChain",
            request_serializer=pb.GetChainRequest.SerializeToString,
            response_deserializer=pb.ChainConfig.FromString)
        self.stubs = {}

    def replicas(self):
        return list(self.get(pb.GetChainRequest(shard=0), timeout=10,
                             wait_for_ready=True).replicas)

    def stub(self, address):
        if address not in self.stubs:
            channel = grpc.insecure_channel(address, options=codec.CHANNEL_OPTIONS)
            self.stubs[address] = pb_grpc.ParameterServerStub(channel)
        return self.stubs[address]

    def call(self, method, request):
        """`method` at the head, again at the (new) head while the chain changes."""
        for _ in range(600):
            try:
                return getattr(self.stub(self.replicas()[0]), method)(request, timeout=60)
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.FAILED_PRECONDITION,
                                      grpc.StatusCode.UNAVAILABLE):
                    raise
            time.sleep(0.05)
        raise SystemExit(f"{method} kept failing")


def build(chain, rows):
    chain.call("DeclareVariables", pb.DeclareVariablesRequest(
        variables=[pb.VariableSpec(name="w", dtype="float32", shape=[1000])],
        tables=[pb.TableSpec(name="t", dim=DIM, dtype="float32", initializer="random_normal",
                             initializer_params={"stddev": 0.01, "seed": 1})]))
    request = pb.InitializeVariablesRequest()
    codec.encode(np.zeros(1000, np.float32), request.values.add(name="w").tensor)
    chain.call("InitializeVariables", request)
    for start_key in range(0, rows, GROW_KEYS):
        lookup = pb.PullRowsRequest()
        keys = np.arange(start_key, min(start_key + GROW_KEYS, rows), dtype=np.int64)
        codec.encode(keys, lookup.keys.add(name="t", train=True).keys)
        chain.call("PullRows", lookup)


def step(chain, rng, keys_per_step, rows, push_id):
    keys = np.unique(rng.integers(0, rows, size=keys_per_step)).astype(np.int64)
    lookup = pb.PullRowsRequest()
    codec.encode(keys, lookup.keys.add(name="t", train=True).keys)
    chain.call("PullRows", lookup)
    push = pb.PushRequest(rule=RULE, worker=0, id=push_id)
    gradient = push.gradients.add(name="t", keyed=True)
    codec.encode(rng.normal(size=(keys.size, DIM)).astype(np.float32), gradient.values)
    codec.encode(keys, gradient.indices)
    codec.encode(rng.normal(size=1000).astype(np.float32), push.gradients.add(name="w").values)
    chain.call("Push", push)


def trainer(chain, seed, args, stop, steps):
    rng = np.random.default_rng(seed)
    sequence = 0
    while not stop.is_set():
        sequence += 1
        step(chain, rng, args.keys, args.rows, pb.PushId(incarnation=seed + 1,
                                                         sequence=sequence))
        steps.append(time.monotonic())


def rows_of(stub, keys):
    lookup = pb.PullRowsRequest()
    codec.encode(keys, lookup.keys.add(name="t", train=False).keys)
    reply = stub.PullRows(lookup, timeout=60)
    return [codec.decode(v.tensor).tobytes() for v in reply.values]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--trainers", type=int, default=2)
    parser.add_argument("--keys", type=int, default=512)
    args = parser.parse_args()
    # A stop (SIGTERM) ends the run through the cleanup below, which stops every replica.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    processes = []
    with tempfile.TemporaryDirectory() as folder:
        log = open(os.path.join(folder, "replicas.log"), "w+")
        try:
            master = f"127.0.0.1:{free_ports('127.0.0.1', 1)[0]}"
            first = [replica(folder, f"r{i}", master, log=log) for i in range(2)]
            processes += [p for p, _ in first]
            port = master.rsplit(":", 1)[1]
            chains = ",".join(a for _, a in first)
            processes.append(start(["-m", "psflow.ps.chain_master", "--chain", f"0={chains}",
                                    "--port", port], log=log)[0])
            chain = Chain(master)
            started = time.monotonic()
            build(chain, args.rows)
            print(f"a chain of 2 replicas holds {args.rows:,} rows (dim {DIM}, Adagrad) after "
                  f"{time.monotonic() - started:.1f} s", flush=True)
            stop, steps = threading.Event(), []
            threads = [threading.Thread(target=trainer, args=(chain, seed, args, stop, steps),
                                        daemon=True) for seed in range(args.trainers)]
            for t in threads:
                t.start()
            time.sleep(5)
            before = len(steps) / 5
            join_started = time.monotonic()
            newcomer, address = replica(folder, "r2", master, join=True, log=log)
            processes.append(newcomer)
            while address not in chain.replicas():
                if newcomer.poll() is not None:
                    raise SystemExit(f"the new replica exited with {newcomer.returncode}")
                time.sleep(0.1)
            took = time.monotonic() - join_started
            during = sum(join_started <= s for s in steps) / took
            time.sleep(2)
            stop.set()
            for t in threads:
                t.join()
            replicas = chain.replicas()
            sample = np.random.default_rng(5).choice(args.rows, 20_000, replace=False)
            sample = np.sort(sample).astype(np.int64)
            same = rows_of(chain.stub(replicas[0]), sample) == rows_of(chain.stub(address), sample)
            log.seek(0)
            said = [line.strip() for line in log if "caught up" in line]
            print(f"training: {before:.1f} steps/s before the join, {during:.1f} steps/s "
                  f"while it joined ({args.trainers} trainers, {args.keys} keys a step)")
            print(said[-1] if said else "(no join line in the replicas' log)")
            verdict = "not met" if took > TARGET_S else \
                "met" if args.rows >= 10_000_000 else "n/a (fewer rows)"
            print(f"the new replica joined the chain {took:.1f} s after it started; "
                  f"target <= {TARGET_S:.0f} s for 10M rows: {verdict}")
            print(f"chain now {replicas}; 20,000 sampled rows equal at the head and the "
                  f"newcomer: {same}")
            if not same:
                raise SystemExit(1)
        finally:
            for p in processes:
                if p.poll() is None:
                    p.terminate()
            for p in processes:
                p.wait()
            log.close()


if __name__ == "__main__":
    main()
