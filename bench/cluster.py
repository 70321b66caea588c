"""Examples/second of training with 2 workers and 1 parameter server, for the digits-sized
MLP (64-256-256-10) and the wide MLP (64-2048-2048-10), batch 64, in async, sync and ssp
(staleness 2) modes; sync and ssp rows also show their ratio to async in the same run.

Each row is one `launch --workers 2 --ps 1` job of bench/cluster_model.py; the figure is the
job's throughput measured by the chief from the global step after a warm-up. Reference figures
for the same jobs on a 2-core machine: TensorFlow's PS runtime about 19k (MLP) and 1.5k (wide)
examples/s, a PyTorch RPC parameter server 28k and 1.5k.

    python bench/cluster.py [--repeat 3] [--models mlp wide] [--modes async sync ssp]
"""

import argparse
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REFERENCE = {"mlp": {"TensorFlow": 19000, "PyTorch RPC": 28000},
             "wide": {"TensorFlow": 1500, "PyTorch RPC": 1500}}
STEPS = {"mlp": (4000, 300), "wide": (300, 30)}


MODES = {"async": [], "sync": [], "ssp": ["--staleness", "2"]}


def run_job(model, workers=2, ps=1, mode="async"):
    steps, warmup = STEPS[model]
    command = [sys.executable, "-m", "psflow.launcher", "--no-progress", "--workers",
               str(workers), "--ps", str(ps), "--mode", mode, *MODES[mode],
               str(HERE / "cluster_model.py"),
               "--model", model, "--steps", str(steps), "--warmup", str(warmup)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    match = re.search(r"throughput: ([0-9.]+) examples/s", result.stdout)
    if result.returncode != 0 or not match:
        raise SystemExit(f"job failed ({' '.join(command)}):\n{result.stdout[-2000:]}\n"
                         f"{result.stderr[-2000:]}")
    return float(match.group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="jobs per row; the best counts")
    parser.add_argument("--models", nargs="+", default=["mlp", "wide"], choices=sorted(STEPS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    args = parser.parse_args()
    print(f"{'model':<6} {'mode':<6} {'examples/s':>11} {'vs TensorFlow':>14} "
          f"{'vs PyTorch RPC':>15} {'vs async':>9}")
    for model in args.models:
        ref = REFERENCE[model]
        # Rounds alternate between the modes, so a slow spell of the machine hits all alike.
        best = {mode: 0.0 for mode in args.modes}
        for _ in range(args.repeat):
            for mode in args.modes:
                best[mode] = max(best[mode], run_job(model, mode=mode))
        for mode in args.modes:
            rate = best[mode]
            vs_async = f"{rate / best['async']:>8.2f}x" if "async" in best else f"{'':>9}"
            print(f"{model:<6} {mode:<6} {rate:>11.0f} {rate / ref['TensorFlow']:>13.2f}x "
                  f"{rate / ref['PyTorch RPC']:>14.2f}x {vs_async}", flush=True)


if __name__ == "__main__":
    main()
