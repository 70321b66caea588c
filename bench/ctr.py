"""Examples/second of a wide & deep CTR model (bench/ctr_model.py: a 4M-row dim-16 table and a
4M-row wide table, DNN 256-128, batch 512, Adagrad) with 2 workers and 2 parameter servers:
the tables read row by row (sparse reads) against the same job pulling them whole each step,
measured in the same run, with their ratio and the bytes on the wire per step; the same job on
a 40M-row table (cost follows the rows a batch touches, not the table); and the test AUC of
examples/ctr.py on generated click logs, on 2 workers and 2 parameter servers against one
process trained for the same steps, with hash-keyed tables (its default) and with fixed
buckets.

    python bench/ctr.py [--rows 4194304] [--steps 1500] [--whole-steps 6] [--big-rows 41943040]
                        [--auc-rows 600000] [--auc-steps 1000]

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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4 * 1024 * 1024)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--whole-steps", type=int, default=6)
    parser.add_argument("--big-rows", type=int, default=40 * 1024 * 1024)
    parser.add_argument("--auc-rows", type=int, default=600_000)
    parser.add_argument("--auc-steps", type=int, default=1000)
    args = parser.parse_args()
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
