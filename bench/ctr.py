"""Examples/second of a wide & deep CTR model (bench/ctr_model.py: a 4M-row dim-16 table and a
4M-row wide table, DNN 256-128, batch 512, Adagrad) with 2 workers and 2 parameter servers:
the tables read row by row (sparse reads) against the same job pulling them whole each step,
measured in the same run, with their ratio and the bytes on the wire per step; the same job on
a 40M-row table (cost follows the rows a batch touches, not the table); and the test AUC of
examples/ctr.py on generated click logs, on 2 workers and 2 parameter servers against one
process trained for the same steps, with hash-keyed tables (its default) and with fixed
buckets.

With --peers it runs instead the CTR job beside its peers on data parsed before the clock on
every side, per layout of workers x parameter servers: psflow with fixed tables and with
hash-keyed tables (bench/ctr_parsed.py: examples/ctr.py's model), TensorFlow's TF1 PS runtime
(bench/peers/tf_ctr.py --input parsed, PSFLOW_PEERS_PYTHON) and TensorFlow
Recommenders-Addons' dynamic_embedding (tf_ctr.py's hash-keyed tables, PSFLOW_TFRA_PYTHON),
alternately, best of --rounds: examples/s, test AUC and CPU seconds per 1,000 examples summed
over every process of a job, and the ratios against their targets.

    python bench/ctr.py [--rows 4194304] [--steps 1500] [--whole-steps 6] [--big-rows 41943040]
                        [--auc-rows 600000] [--auc-steps 1000]
    python bench/ctr.py --peers [--peer-rows 600000] [--peer-steps 800] [--layouts 2x2,1x1,4x2]
                        [--rounds 2]

--big-rows 0 or --auc-rows 0 skips that part.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples"
sys.path.insert(0, str(HERE / "peers"))
import tf_ctr  # noqa: E402
from ctr_jobs import best_of, make_data, peer_missing, psflow_job  # noqa: E402

FIXED, HASHED = "psflow, fixed tables", "psflow, hash-keyed tables"
TENSORFLOW, TFRA = "TensorFlow TF1 PS runtime", "TFRA dynamic_embedding"
# (psflow's job, its peer, the least ratio of examples/s); CPU and AUC targets below
SPEED_TARGETS = ((FIXED, TENSORFLOW, 2.0), (HASHED, TFRA, 2.0), (HASHED, FIXED, 0.95))
CPU_TARGET = 0.5  # psflow's fixed tables against TensorFlow, CPU s per 1,000 examples timed
AUC_SLACK = 0.005


def run(command, what):
    command = [str(part) for part in command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise SystemExit(f"{what} failed ({' '.join(map(str, command))}):\n"
                         f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result.stdout


def launch(*args):
    return [sys.executable, "-m", "psflow.launcher", "--no-progress", "--workers", "2", "--ps",
            "2", *map(str, args)]


def run_job(rows, steps, warmup, whole):
    out = run(launch(HERE / "ctr_model.py", "--rows", rows, "--steps", steps, "--warmup",
                     warmup, *(["--whole"] if whole else [])), "the CTR job")
    match = re.search(r"throughput: ([0-9.]+) examples/s \((.*)\)", out)
    if not match:
        raise SystemExit(f"no throughput line in the CTR job's output:\n{out[-2000:]}")
    return float(match.group(1)), match.group(2)


def available_memory():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def auc_runs(rows, steps, buckets):
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "clicks.tsv")
        made = run([sys.executable, EXAMPLES / "make_ctr_data.py", data, "--rows", rows],
                   "make_ctr_data.py")
        truth = re.search(r"truth auc: ([0-9.]+)", made).group(1)
        print(f"generated {rows} rows of click logs; the planted truth's AUC is {truth}",
              flush=True)
        args = [EXAMPLES / "ctr.py", "--data", data, "--steps", steps, "--batch-size", 512,
                "--buckets", buckets]
        speeds = {}
        for name, command in (
                ("one process, tables", [sys.executable, *args]),
                ("2 workers, 2 PS, tables", launch(*args)),
                (f"2 workers, 2 PS, {buckets} buckets", launch(*args, "--table", "buckets"))):
            started = time.perf_counter()
            out = run(command, f"examples/ctr.py ({name})")
            auc = re.search(r"test auc: ([0-9.]+)  logloss: ([0-9.]+)", out)
            speed = re.search(r"throughput: ([0-9.]+) examples/s", out)
            speeds[name] = float(speed.group(1))
            print(f"examples/ctr.py, {name:31}: test auc {auc.group(1)}  logloss "
                  f"{auc.group(2)}  ({speeds[name]:.0f} examples/s with parsing; "
                  f"{time.perf_counter() - started:.0f} s in all)", flush=True)
        tables, fixed = list(speeds.values())[1:]
        print(f"hash-keyed tables against fixed buckets, 2 workers and 2 PS: "
              f"{tables / fixed:.2f}x", flush=True)


def peer_jobs(path, steps, workers, ps):
    """{name: job} of psflow's two table kinds and the peers whose interpreters are set."""
    script = HERE / "ctr_parsed.py"
    jobs = {FIXED: lambda: psflow_job(script, path, steps, "buckets", workers, ps),
            HASHED: lambda: psflow_job(script, path, steps, "dynamic", workers, ps)}
    missing = peer_missing()
    if missing:
        print(f"  {TENSORFLOW} skipped: {missing}", flush=True)
    else:
        jobs[TENSORFLOW] = lambda: tf_ctr.job(path, steps, workers, ps, input="parsed")
    missing = peer_missing("PSFLOW_TFRA_PYTHON", "tensorflow_recommenders_addons")
    if missing:
        print(f"  {TFRA} skipped: {missing}", flush=True)
    else:  # tf_ctr.py runs its hash-keyed tables with PSFLOW_TFRA_PYTHON
        jobs[TFRA] = lambda: tf_ctr.job(path, steps, workers, ps, input="parsed",
                                        table="dynamic")
    return jobs


def verdict(met):
    return "met" if met else "not met"


def print_ratios(best):
    for ours, peer, target in SPEED_TARGETS:
        if ours in best and peer in best:
            ratio = best[ours]["throughput"] / best[peer]["throughput"]
            print(f"  {ours} / {peer}: {ratio:.2f}x examples/s (target >= {target}x: "
                  f"{verdict(ratio >= target)})", flush=True)
        else:
            print(f"  {ours} / {peer}: not measured (target >= {target}x)", flush=True)
    if FIXED in best and TENSORFLOW in best:
        ratio = best[FIXED]["timed_cpu_per_1000"] / best[TENSORFLOW]["timed_cpu_per_1000"]
        whole = best[FIXED]["cpu_per_1000"] / best[TENSORFLOW]["cpu_per_1000"]
        print(f"  CPU s per 1,000 examples, {FIXED} / {TENSORFLOW}: {ratio:.2f}x timed "
              f"(target <= {CPU_TARGET}x: {verdict(ratio <= CPU_TARGET)}), {whole:.2f}x whole "
              f"job", flush=True)
    for ours, peer in ((FIXED, TENSORFLOW), (HASHED, TFRA)):
        if ours in best and peer in best:
            auc, floor = best[ours]["auc"], best[peer]["auc"] - AUC_SLACK
            print(f"  test auc, {ours} {auc:.4f} against {peer} {best[peer]['auc']:.4f} "
                  f"(target >= {floor:.4f}: {verdict(auc >= floor)})", flush=True)


def layouts(text):
    """"2x2,1x1" into [(2, 2), (1, 1)]: (workers, parameter servers) of each layout."""
    sizes = [item.strip().split("x") for item in text.split(",")]
    if not all(len(size) == 2 and all(n.isdigit() and int(n) > 0 for n in size)
               for size in sizes):
        raise argparse.ArgumentTypeError(f"layouts are WORKERSxPS, comma-separated: {text!r}")
    return [(int(workers), int(ps)) for workers, ps in sizes]


def peers(rows, steps, rounds, sizes):
    with tempfile.TemporaryDirectory() as folder:
        path = make_data(rows, folder, "clicks.tsv")
        for workers, ps in sizes:
            print(f"{rows:,} rows parsed before the clock, {workers}x{ps} (workers x PS), batch "
                  f"{tf_ctr.BATCH}, {steps} steps, best of {rounds}:", flush=True)
            best = best_of(peer_jobs(path, steps, workers, ps), rounds, steps)
            print_ratios(best)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", action="store_true",
                        help="run only the comparison with TensorFlow and TFRA")
    parser.add_argument("--peer-rows", type=int, default=600_000)
    parser.add_argument("--peer-steps", type=int, default=800)
    parser.add_argument("--layouts", type=layouts, default=[(2, 2)],
                        help="WORKERSxPS, comma-separated (default 2x2)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rows", type=int, default=4 * 1024 * 1024)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--whole-steps", type=int, default=6)
    parser.add_argument("--big-rows", type=int, default=40 * 1024 * 1024)
    parser.add_argument("--auc-rows", type=int, default=600_000)
    parser.add_argument("--auc-steps", type=int, default=1000)
    args = parser.parse_args()
    if args.peers:
        peers(args.peer_rows, args.peer_steps, args.rounds, args.layouts)
        return
    sparse, detail = run_job(args.rows, args.steps, args.steps // 10, whole=False)
    print(f"{args.rows} rows, read by lookup: {sparse:>8.0f} examples/s ({detail})", flush=True)
    whole, detail = run_job(args.rows, args.whole_steps, 2, whole=True)
    print(f"{args.rows} rows, pulled whole:   {whole:>8.0f} examples/s ({detail})", flush=True)
    print(f"ratio: {sparse / whole:.1f}x", flush=True)
    if args.big_rows:
        # the two servers hold value and accumulator of both tables; the chief draws the
        # initial values once
        needed = args.big_rows * 17 * 4 * 3
        if available_memory() < needed * 1.2:
            print(f"{args.big_rows} rows: skipped, it needs about {needed / 2**30:.1f} GiB",
                  flush=True)
        else:
            big, detail = run_job(args.big_rows, args.steps, args.steps // 10, whole=False)
            print(f"{args.big_rows} rows, read by lookup: {big:>8.0f} examples/s ({detail}); "
                  f"{big / sparse:.2f}x the {args.rows}-row table", flush=True)
    if args.auc_rows:
        auc_runs(args.auc_rows, args.auc_steps, args.rows)


if __name__ == "__main__":
    main()
