"""CTR jobs side by side: psflow's under the launcher and its peers' (bench/peers/tf_ctr.py),
each measured by bench/peers/common.py's run_job (examples/s, test AUC and the CPU seconds of
every process of the job, read from /proc), run alternately, each job's best round kept."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench" / "peers"))
import common  # noqa: E402
import tf_ctr  # noqa: E402


def make_data(rows, folder, name="criteo.tsv"):
    """A Criteo-format click log of `rows` lines from examples/make_ctr_data.py."""
    path = os.path.join(folder, name)
    subprocess.run([sys.executable, str(ROOT / "examples" / "make_ctr_data.py"), path,
                    "--rows", str(rows)], check=True, stdout=subprocess.DEVNULL)
    return path


def psflow_job(script, path, steps, table, workers=2, ps=2):
    """A psflow CTR job script (examples/ctr.py or bench/ctr_parsed.py) under the launcher;
    common.run_job's figures."""
    command = [sys.executable, "-m", "psflow.launcher", "--no-progress", "--workers",
               str(workers), "--ps", str(ps), str(script), "--data", str(path), "--steps",
               str(steps), "--table", table]
    # the launcher exits once its job is done; until then the meter samples its children
    return common.run_job([("launcher", command, {})], env={"PYTHONUNBUFFERED": "1"},
                          grace=300)


def peer_missing(variable="PSFLOW_PEERS_PYTHON", module="tensorflow"):
    """Why the interpreter the environment variable names cannot run a peer, or None."""
    python = os.environ.get(variable)
    if not python:
        return f"{variable} is unset"
    if subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode:
        return f"{python} has no {module}"
    return None


def describe(name, figures):
    return (f"{name:26}: {figures['throughput']:>8,.0f} examples/s  test auc "
            f"{figures['auc']:.4f}  CPU s per 1,000 examples {figures['timed_cpu_per_1000']:.3f}"
            f" timed, {figures['cpu_per_1000']:.3f} whole job")


def best_of(jobs, rounds, steps, optional=()):
    """Runs the jobs ({name: function returning run_job's figures}) alternately, `rounds`
    times; returns {name: the figures of its round with the most examples/s}, each with its
    CPU seconds per 1,000 examples over the timed steps and over the whole job. A job named
    in `optional` that raises TypeError or RuntimeError is dropped with a printed line."""
    examples = steps * tf_ctr.BATCH / 1000
    jobs, best = dict(jobs), {}
    for round_ in range(rounds):
        for name, run in list(jobs.items()):
            try:
                figures = run()
            except (TypeError, RuntimeError) as exc:
                if name not in optional:
                    raise
                print(f"  {name} skipped: {str(exc).splitlines()[0]}", flush=True)
                del jobs[name]
                continue
            figures["cpu_per_1000"] = figures["cpu_seconds"] / examples
            figures["timed_cpu_per_1000"] = figures["timed_cpu_seconds"] / \
                (figures["timed_examples"] / 1000)
            print(f"  round {round_ + 1}, {describe(name, figures)}", flush=True)
            if name not in best or figures["throughput"] > best[name]["throughput"]:
                best[name] = figures
    for name, figures in best.items():
        print(f"  best,    {describe(name, figures)}", flush=True)
    return best
