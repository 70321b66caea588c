"""A stand-in for a psflow worker, for the launcher's tests.

    fake_worker.py OUT_DIR [--steps K] [--fail-index I --fail-code C|kill] [--hang]
                   [--ignore-sigterm] [--skip-done] [--spawn] [other args, recorded]

Records what the launcher gave it (OUT_DIR/worker-<i>.json: pid, TF_CONFIG, environment,
arguments), prints a line on stdout and one on stderr, registers with every PS of TF_CONFIG,
optionally pushes K global steps with a loss, then reports done on every PS and exits 0.
Worker --fail-index exits with --fail-code instead (or SIGKILLs itself); --hang stays after
registering (OUT_DIR/worker-<i>.ready) until it is stopped. SIGTERM leaves
OUT_DIR/worker-<i>.sigterm behind (unless --ignore-sigterm). --spawn starts a
grandchild process that sleeps (its pid is in the record). Like the real worker runtime, it
exits by itself when the process PSFLOW_PARENT_PID is gone.
"""

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time

import grpc

from psflow.proto import psflow_pb2 as pb
from psflow.proto import psflow_pb2_grpc as pb_grpc
from psflow.transport import auth


def watch_parent(parent_pid):
    while True:
        if os.getppid() != parent_pid:
            os._exit(70)
        time.sleep(0.1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--fail-index", type=int, default=-1)
    parser.add_argument("--fail-code", default="3")
    parser.add_argument("--hang", action="store_true")
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument("--skip-done", action="store_true")
    parser.add_argument("--spawn", action="store_true")
    args, _ = parser.parse_known_args()

    raw = os.environ["TF_CONFIG"]
    token = auth.call_metadata(auth.token_from_env())  # the job's token, as workers send it
    index = json.loads(raw)["task"]["index"]
    record = {"pid": os.getpid(), "tf_config": raw, "argv": sys.argv[1:],
              "env": {k: os.environ.get(k) for k in
                      ("PSFLOW_PARENT_PID", "PSFLOW_MODE", "PYTHONUNBUFFERED",
                       "OPENBLAS_NUM_THREADS")}}
    if args.spawn:  # a process of its own, as a data loader would start
        record["grandchild_pid"] = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(300)"]).pid
    with open(os.path.join(args.out_dir, f"worker-{index}.json"), "w") as f:
        json.dump(record, f)
    threading.Thread(target=watch_parent, args=(int(os.environ["PSFLOW_PARENT_PID"]),),
                     daemon=True).start()
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        def on_sigterm(signum, frame):
            open(os.path.join(args.out_dir, f"worker-{index}.sigterm"), "w").close()
            os._exit(128 + signum)
        signal.signal(signal.SIGTERM, on_sigterm)
    print(f"hello from worker {index}")
    print(f"a line on stderr from worker {index}", file=sys.stderr)

    stubs = []
    for address in json.loads(raw)["cluster"]["ps"]:
        channel = grpc.insecure_channel(address)
        grpc.channel_ready_future(channel).result(timeout=20)
        stub = pb_grpc.ParameterServerStub(channel)
        stub.RegisterWorker(pb.WorkerRequest(task_index=index), timeout=10, metadata=token)
        stubs.append(stub)

    if index == args.fail_index:
        time.sleep(0.5)
        print(f"worker {index} fails now", file=sys.stderr)
        if args.fail_code == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        sys.exit(int(args.fail_code))

    rule = pb.UpdateRule(name="sgd", hyper={"learning_rate": 0.1})
    for step in range(args.steps):
        stubs[0].Push(pb.PushRequest(rule=rule, worker=index, increment_global_step=True),
                      timeout=10, metadata=token)
        stubs[0].Heartbeat(pb.HeartbeatRequest(task_index=index, local_step=step + 1,
                                               loss=1.0 / (step + 1) if step else math.nan),
                           timeout=10, metadata=token)
        time.sleep(0.05)
    if args.steps:
        print(f"worker {index} finished its steps", file=sys.stderr)

    if args.hang:
        open(os.path.join(args.out_dir, f"worker-{index}.ready"), "w").close()
        while True:
            time.sleep(1)
    if not args.skip_done:
        for stub in stubs:
            stub.WorkerDone(pb.WorkerRequest(task_index=index), timeout=10, metadata=token)
    print(f"worker {index} done")


if __name__ == "__main__":
    main()
