"""Replicated parameter servers under a running CTR job (`launch --ps-replicas`): what a
failure costs the job, and what replication costs it. Prints every figure and whether its
target is met.

- kill: a 2-worker CTR job (examples/ctr.py) on 2 shards x 2 replicas, once with the head of
  shard 0 killed (exit 137, as by kill -9) as it answers a push, once with its tail killed as a
  push reaches it (ps/faults.py's named points), once without a failure. The fault fires in
  every replica process that gets there (after as many writes in that place), so a replacement
  that later holds the same place may die the same way: the runs say how many replicas died.
  Per run: the longest step any worker saw (target <= 5 s: the workers continue), the
  workers' steps against the final global step (each step pushes once: equal means no
  acknowledged update lost and none applied twice), whether the chief restored a checkpoint
  (target: no), the replacement's join, and the test AUC.
- cost: the CTR job and the digits MLP (examples/digits.py) with R=1 and R=2, alternately,
  best of --rounds: R=2's throughput against R=1's (target: costs <= 30%).
- catchup: bench/ha_catchup.py (a new replica of a 10M-row shard catching up under training;
  target <= 60 s).
- chaos: a CTR job of --chaos-minutes with a random replica killed (SIGKILL) every 30 s, and
  the same job without faults: AUC within 0.005 (bench only: minutes long).

    python bench/ha.py [--what kill,cost,catchup,chaos] [--rows 400000] [--steps 3000]
        [--rounds 2] [--chaos-minutes 5]
"""

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STALL_TARGET_S = 5.0
COST_TARGET = 0.30
AUC_TARGET = 0.005
CHAOS_EVERY_S = 30.0
BATCH = 512  # examples/ctr.py's default batch

STEPS = re.compile(r"\[worker:(\d+)\] this worker: (\d+) steps, the longest ([\d.]+) s")
AUC = re.compile(r"test auc: ([\d.]+)")
THROUGHPUT = re.compile(r"throughput: ([\d.]+) examples/s")
GLOBAL_STEP = re.compile(r"global step (\d+)")
LOST = re.compile(r"(\d+) replicas? lost on the way")
STARTED = re.compile(r"started (ps \d+\.\d+) \(pid (\d+)\)")
ACCURACY = re.compile(r"test accuracy: ([\d.]+)")
DIGITS_STEP = re.compile(r"\] step (\d+): loss")


class Run:
    """One `launch` run: its output lines (with the time each arrived) and what they say."""

    def __init__(self, args, env=None, on_line=None):
        self.lines, self.started = [], time.monotonic()
        command = [sys.executable, "-m", "psflow.launcher", "--no-progress", *map(str, args)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True,
                                        env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))
        for line in self.process.stdout:
            self.lines.append((time.monotonic() - self.started, line.rstrip()))
            if on_line is not None:
                on_line(line)
        self.code = self.process.wait()
        self.seconds = time.monotonic() - self.started

    def text(self):
        return "\n".join(line for _, line in self.lines)

    def find(self, pattern):
        return [m for _, line in self.lines for m in [pattern.search(line)] if m]

    def rate(self, pattern):
        """Steps per second between the first and the last line matching `pattern` (its group
        a global step), from the times they arrived: the job's pace once it runs."""
        seen = [(when, int(m.group(1))) for when, line in self.lines
                for m in [pattern.search(line)] if m]
        if len(seen) < 2 or seen[-1][0] <= seen[0][0]:
            return None
        return (seen[-1][1] - seen[0][1]) / (seen[-1][0] - seen[0][0])

    def last(self, pattern, cast=float):
        found = self.find(pattern)
        return cast(found[-1].group(1)) if found else None


def ctr_args(data, steps, replicas, workers=2, ps=2):
    return ["--workers", workers, "--ps", ps, "--ps-replicas", replicas,
            ROOT / "examples" / "ctr.py", "--data", data, "--steps", steps, "--warmup", 50]


def make_data(rows, folder):
    path = os.path.join(folder, "criteo.tsv")
    subprocess.run([sys.executable, str(ROOT / "examples" / "make_ctr_data.py"), path,
                    "--rows", str(rows)], check=True, stdout=subprocess.DEVNULL)
    return path


def describe_failover(name, run):
    steps = run.find(STEPS)
    worker_steps = sum(int(m.group(2)) for m in steps)
    longest = max((float(m.group(3)) for m in steps), default=float("nan"))
    global_step = run.last(GLOBAL_STEP, int)
    restored = "restor" in run.text().lower()
    lost = run.last(LOST, int) or 0
    joined = [line for _, line in run.lines if "joined" in line]
    stall = "met" if longest <= STALL_TARGET_S else "not met"
    counted = "none lost or applied twice" if worker_steps == global_step else "DIFFERENT"
    print(f"{name}: exit {run.code}, {run.seconds:.0f} s; longest step {longest:.2f} s "
          f"(target <= {STALL_TARGET_S:g} s: {stall}); workers' steps {worker_steps} vs "
          f"global step {global_step} ({counted}); checkpoint restored: "
          f"{'yes' if restored else 'no'}; replicas lost {lost}; test auc {run.last(AUC)}",
          flush=True)
    for line in joined[-2:]:
        print(f"    {line}")
    return run.code == 0 and worker_steps == global_step and not restored and \
        longest <= STALL_TARGET_S


def kill(args, data):
    print(f"== kill: CTR job, 2 workers, 2 shards x 2 replicas, {args.steps} steps", flush=True)
    after = args.steps // 2  # writes of the replica before the fault fires: mid-job
    runs = {"no failure": {},
            "head of shard 0 killed": {"PSFLOW_FAULT": f"kill:before-ack:0:0:1:{after}"},
            "tail of shard 0 killed": {"PSFLOW_FAULT": f"kill:before-apply:0:1:1:{after}"}}
    ok = True
    for name, env in runs.items():
        run = Run(ctr_args(data, args.steps, 2), env)
        ok &= describe_failover(name, run)
    return ok


def cost(args, data):
    print(f"== cost: R=2 against R=1, best of {args.rounds} rounds", flush=True)
    jobs = {
        "CTR job": (lambda r: ctr_args(data, args.steps, r), THROUGHPUT),
        "digits MLP": (lambda r: ["--workers", 2, "--ps", 2, "--ps-replicas", r,
                                  ROOT / "examples" / "digits.py", "--steps", args.digits_steps],
                       None),
    }
    for name, (make, pattern) in jobs.items():
        best = {1: 0.0, 2: 0.0}
        for round_ in range(args.rounds):
            for replicas in (1, 2):
                run = Run(make(replicas))
                rate = run.last(pattern) if pattern else run.rate(DIGITS_STEP)
                if run.code != 0 or rate is None:
                    print(run.text()[-3000:])
                    raise SystemExit(f"{name} with R={replicas} failed")
                unit = "examples/s" if pattern else "global steps/s (steps 250 on)"
                quality = f"test auc {run.last(AUC)}" if pattern else \
                    f"test accuracy {run.last(ACCURACY)}"
                print(f"  round {round_ + 1}, {name}, R={replicas}: {rate:,.1f} {unit}, "
                      f"{quality}", flush=True)
                best[replicas] = max(best[replicas], rate)
        kept = best[2] / best[1]
        print(f"{name}: R=2 keeps {kept:.2f}x of R=1 (costs {1 - kept:.0%}; target <= "
              f"{COST_TARGET:.0%}: {'met' if 1 - kept <= COST_TARGET else 'not met'})",
              flush=True)


def catchup(args):
    print("== catchup", flush=True)
    subprocess.run([sys.executable, str(ROOT / "bench" / "ha_catchup.py"), "--rows",
                    str(args.catchup_rows)], check=False)


def chaos(args, data):
    seconds = args.chaos_minutes * 60
    print(f"== chaos: a CTR job of about {args.chaos_minutes:g} minutes, a random replica "
          f"killed every {CHAOS_EVERY_S:g} s, against the same job without faults", flush=True)
    # As many steps as the job trains in the time, at the pace of a short run first.
    probe = Run(ctr_args(data, 600, 2))
    pace = (probe.last(THROUGHPUT) or 0) / BATCH
    if not pace:
        print(probe.text()[-3000:])
        raise SystemExit("the probe run printed no throughput")
    steps = int(pace * seconds)
    pids, killed, done = {}, [], threading.Event()

    def on_line(line):
        m = STARTED.search(line)
        if m:
            pids[m.group(1)] = int(m.group(2))

    def killer():
        rng = random.Random(7)
        while not done.wait(CHAOS_EVERY_S):
            alive = [(name, pid) for name, pid in pids.items() if _alive(pid)]
            if alive:
                name, pid = rng.choice(alive)
                os.kill(pid, signal.SIGKILL)
                killed.append(name)
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    faulty = Run(ctr_args(data, steps, 2), on_line=on_line)
    done.set()
    clean = Run(ctr_args(data, steps, 2))
    auc_faulty, auc_clean = faulty.last(AUC), clean.last(AUC)
    print(f"chaos: {steps} steps; {len(killed)} replicas killed ({', '.join(killed)}); "
          f"exit {faulty.code} in {faulty.seconds:.0f} s, test auc {auc_faulty}; without "
          f"faults: exit {clean.code} in {clean.seconds:.0f} s, test auc {auc_clean}")
    if auc_faulty is None or auc_clean is None:
        print(faulty.text()[-3000:])
        return False
    gap = abs(auc_faulty - auc_clean)
    print(f"AUC gap {gap:.4f} (target <= {AUC_TARGET}: "
          f"{'met' if gap <= AUC_TARGET and faulty.code == 0 else 'not met'})")
    return faulty.code == 0 and gap <= AUC_TARGET


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--what", default="kill,cost,catchup",
                        help="comma-separated: kill, cost, catchup, chaos")
    parser.add_argument("--rows", type=int, default=400_000, help="rows of the click log")
    parser.add_argument("--steps", type=int, default=3000, help="CTR job's global steps")
    parser.add_argument("--digits-steps", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--catchup-rows", type=int, default=10_000_000)
    parser.add_argument("--chaos-minutes", type=float, default=5.0)
    args = parser.parse_args()
    what = set(args.what.split(","))
    with tempfile.TemporaryDirectory() as folder:
        data = make_data(args.rows, folder) if what - {"catchup"} else None
        if "kill" in what:
            kill(args, data)
        if "cost" in what:
            cost(args, data)
        if "catchup" in what:
            catchup(args)
        if "chaos" in what:
            chaos(args, data)


if __name__ == "__main__":
    main()
