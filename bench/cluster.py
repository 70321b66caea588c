"""Examples/second of training, for the digits-sized MLP (64-256-256-10) and the wide MLP
(64-2048-2048-10), batch 64, in async, sync and ssp (staleness 2) modes; sync and ssp rows
also show their ratio to async in the same run, and psflow's rows the bytes one worker's step
sends and receives.

Each row is one `launch --workers W --ps P` job of bench/cluster_model.py (2 workers and 1
parameter server unless --layouts says otherwise, e.g. `--layouts 2x1 4x2`); the figure is
the job's throughput measured by the chief from the global step after a warm-up.

With --peers the same workloads also run, alternating with psflow's in each round, in
TensorFlow's own PS runtime (bench/peers/tf_ps.py: async, and sync with
SyncReplicasOptimizer) and in a PyTorch RPC parameter server (bench/peers/torch_rpc.py:
async); each row then shows psflow's ratio to the best peer of that mode. The peers need
tensorflow-cpu and torch (`pip install ".[bench]"`, or PSFLOW_PEERS_PYTHON naming an
interpreter that has them).

    python bench/cluster.py [--repeat 3] [--models mlp wide] [--modes async sync ssp]
                            [--layouts 2x1 4x2] [--peers]
    python bench/cluster.py --scaling     # async, 1, 2, 4 workers x 1, 2 PS, psflow alone
"""

import argparse
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))
from common import STEPS  # noqa: E402  (global steps, warm-up) per model, the peers' too

MODES = {"async": [], "sync": [], "ssp": ["--staleness", "2"]}
SCALING = ["1x1", "2x1", "4x1", "1x2", "2x2", "4x2"]


def run_job(model, workers=2, ps=1, mode="async"):
    """(examples/s, bytes per step) of one psflow job."""
    steps, warmup = STEPS[model]
    command = [sys.executable, "-m", "psflow.launcher", "--no-progress", "--workers",
               str(workers), "--ps", str(ps), "--mode", mode, *MODES[mode],
               str(HERE / "cluster_model.py"),
               "--model", model, "--steps", str(steps), "--warmup", str(warmup)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    match = re.search(r"throughput: ([0-9.]+) examples/s .*?([0-9]+) bytes per step",
                      result.stdout)
    if result.returncode != 0 or not match:
        raise SystemExit(f"job failed ({' '.join(command)}):\n{result.stdout[-2000:]}\n"
                         f"{result.stderr[-2000:]}")
    return float(match.group(1)), int(match.group(2))


def peer_jobs(mode):
    """{peer name: a function of (model, workers, ps) that runs one job and returns
    examples/s}."""
    import tf_ps
    import torch_rpc
    jobs = {"TensorFlow": lambda model, workers, ps: tf_ps.job(model, mode, workers, ps)}
    if mode == "async":
        jobs["PyTorch RPC"] = lambda model, workers, ps: torch_rpc.job(model, workers, ps)
    return {name: retried(name, job) for name, job in jobs.items()}


def retried(name, job):
    """`job`, tried a second time if its first try fails (a peer's job can fail to start,
    e.g. on a port taken meanwhile); a second failure ends the bench, naming the peer."""
    def run(*args):
        try:
            return job(*args)
        except RuntimeError as exc:
            print(f"({name} {args}: {str(exc).splitlines()[0]}; trying once more)",
                  file=sys.stderr, flush=True)
            return job(*args)
    return run


def layout(text):
    workers, _, ps = text.partition("x")
    try:
        return int(workers), int(ps)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WORKERSxPS, e.g. 4x2") from None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="jobs per row; the best counts")
    parser.add_argument("--models", nargs="+", default=["mlp", "wide"], choices=sorted(STEPS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--layouts", nargs="+", type=layout, default=[(2, 1)],
                        metavar="WxP", help="workers x parameter servers (default 2x1)")
    parser.add_argument("--peers", action="store_true",
                        help="run TensorFlow's PS runtime and a PyTorch RPC PS alike")
    parser.add_argument("--scaling", action="store_true",
                        help="async jobs of 1, 2, 4 workers x 1, 2 PS (psflow alone)")
    args = parser.parse_args()
    if args.scaling:
        args.modes, args.layouts = ["async"], [layout(t) for t in SCALING]
    peers = {mode: peer_jobs(mode) for mode in args.modes if mode != "ssp"} \
        if args.peers else {}
    print(f"{'model':<6} {'layout':<7} {'mode':<6} {'system':<12} {'examples/s':>11} "
          f"{'bytes/step':>11} {'vs async':>9} {'psflow vs best peer':>20}")
    for model in args.models:
        for workers, ps in args.layouts:
            # Rounds alternate between the systems and modes, so a slow spell of the
            # machine hits all alike.
            best, wire = {}, {}
            for _ in range(args.repeat):
                for mode in args.modes:
                    runs = {"psflow": lambda m, w, p, mode=mode: run_job(m, w, p, mode),
                            **peers.get(mode, {})}
                    for system, job in runs.items():
                        rate = job(model, workers, ps)
                        if system == "psflow":
                            rate, wire[mode] = rate
                        best[(mode, system)] = max(best.get((mode, system), 0.0), rate)
            for mode in args.modes:
                for system in ["psflow", *peers.get(mode, {})]:
                    rate = best[(mode, system)]
                    base = best.get(("async", system))
                    vs_async = f"{rate / base:>8.2f}x" if base else f"{'':>9}"
                    size = f"{wire[mode]:>11}" if system == "psflow" else f"{'':>11}"
                    ratio = ""
                    if system == "psflow" and peers.get(mode):
                        top = max(best[(mode, peer)] for peer in peers[mode])
                        ratio = f"{rate / top:>19.2f}x"
                    print(f"{model:<6} {f'{workers}x{ps}':<7} {mode:<6} {system:<12} "
                          f"{rate:>11.0f} {size} {vs_async} {ratio}", flush=True)


if __name__ == "__main__":
    main()
