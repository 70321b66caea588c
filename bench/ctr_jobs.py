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
    try:
        common.python(variable, module)
    except common.MissingPeer as missing:
        return str(missing)
    return None


def describe(name, figures):
    return (f"{name:26}: {figures['throughput']:>8,.0f} examples/s  test auc "
            f"{figures['auc']:.4f}  CPU s per 1,000 examples {figures['timed_cpu_per_1000']:.3f}"
            f" timed, {figures['cpu_per_1000']:.3f} whole job")


def best_of(jobs, rounds, steps):
    """Runs the jobs ({name: function returning run_job's figures}) alternately, `rounds`
    times; returns {name: the figures of its round with the most examples/s}, each with its
    CPU seconds per 1,000 examples over the timed steps and over the whole job."""
    best = {}
    for round_ in range(rounds):
        for name, run in jobs.items():
            figures = run()
            figures["timed_cpu_per_1000"], figures["cpu_per_1000"] = common.cpu_per_1000(
                figures, steps * tf_ctr.BATCH)
            print(f"  round {round_ + 1}, {describe(name, figures)}", flush=True)
            if name not in best or figures["throughput"] > best[name]["throughput"]:
                best[name] = figures
    for name, figures in best.items():
        print(f"  best,    {describe(name, figures)}", flush=True)
    return best
