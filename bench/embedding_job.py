"""A job streaming --events events over --keys distinct keys into a hash-keyed table on 2
workers and 2 parameter servers (bench/embedding_stream.py), then the same checkpoint restored
onto 3 parameter servers: prints events/s, the largest process's peak memory, the checkpoint's
rows, and whether every row came back intact.

    python bench/embedding_job.py [--events 50000000] [--keys 10000000]
"""

import argparse
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import psflow

HERE = Path(__file__).resolve().parent


def launch(workers, ps, root, events, keys):
    command = [sys.executable, "-m", "psflow.launcher", "--no-progress", "--workers",
               str(workers), "--ps", str(ps), "--checkpoint-root", root,
               str(HERE / "embedding_stream.py"), "--events", str(events), "--keys", str(keys),
               "--checkpoint-dir", root]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=7200)
    if result.returncode != 0:
        raise SystemExit(f"the job failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout, time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000_000)
    parser.add_argument("--keys", type=int, default=10_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        out, seconds = launch(2, 2, root, args.events, args.keys)
        speed = re.search(r"streamed (\d+) events in ([0-9.]+) s: (\d+) events/s", out)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        first = psflow.load_model(f"{root}/model.npz")
        rows = first["events/keys"].size
        print(f"2 workers, 2 PS: {speed.group(1)} events in {speed.group(2)} s "
              f"({speed.group(3)} events/s; {seconds:.0f} s with start and the final "
              f"checkpoint); {rows} rows; largest process peak {peak / 2**30:.2f} GiB",
              flush=True)
        _, seconds = launch(1, 3, root, args.events, args.keys)
        again = psflow.load_model(f"{root}/model.npz")
        intact = np.array_equal(again["events/keys"], first["events/keys"]) and \
            np.array_equal(again["events/values"], first["events/values"])
        print(f"restored onto 3 PS in {seconds:.0f} s: {again['events/keys'].size} rows, "
              f"{'every row intact' if intact else 'ROWS DIFFER'}", flush=True)


if __name__ == "__main__":
    main()
