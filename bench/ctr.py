"""Examples/second of a wide & deep CTR model (bench/ctr_model.py: a 4M-row dim-16 table and a
4M-row wide table, DNN 256-128, batch 512, Adagrad) with 2 workers and 2 parameter servers:
the tables read row by row (sparse reads) against the same job pulling them whole each step,
measured in the same run, with their ratio.

    python bench/ctr.py [--rows 4194304] [--steps 400] [--whole-steps 12]
"""

import argparse
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_job(rows, steps, warmup, whole):
    command = [sys.executable, "-m", "psflow.launcher", "--no-progress", "--workers", "2",
               "--ps", "2", str(HERE / "ctr_model.py"), "--rows", str(rows), "--steps",
               str(steps), "--warmup", str(warmup)] + (["--whole"] if whole else [])
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    match = re.search(r"throughput: ([0-9.]+) examples/s \((.*)\)", result.stdout)
    if result.returncode != 0 or not match:
        raise SystemExit(f"job failed ({' '.join(command)}):\n{result.stdout[-2000:]}\n"
                         f"{result.stderr[-2000:]}")
    return float(match.group(1)), match.group(2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4 * 1024 * 1024)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--whole-steps", type=int, default=12)
    args = parser.parse_args()
    sparse, detail = run_job(args.rows, args.steps, args.steps // 10, whole=False)
    print(f"rows by lookup: {sparse:>9.0f} examples/s ({detail})", flush=True)
    whole, detail = run_job(args.rows, args.whole_steps, 2, whole=True)
    print(f"whole tables:   {whole:>9.0f} examples/s ({detail})", flush=True)
    print(f"ratio: {sparse / whole:.1f}x; TensorFlow's PS runtime reaches about 39k examples/s "
          "on this workload on a 2-core machine (issue's figure)")


if __name__ == "__main__":
    main()
