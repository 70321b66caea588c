"""The peers' job runner (bench/peers/common.py): it waits for a job's throughput and AUC lines,
stops the ps tasks that never exit, and counts the CPU time of every process of the job,
also of a child whose parent exited first, and of the timed window the throughput names."""

import importlib.util
import pathlib
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def common():
    spec = importlib.util.spec_from_file_location("peers_common",
                                                  ROOT / "bench" / "peers" / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BURN = "import time\ndef burn(s):\n    end = time.process_time() + s\n" \
    "    while time.process_time() < end:\n        pass\n"

CHIEF = BURN + textwrap.dedent("""
    import os, time
    if os.fork() == 0:          # a child left running when its parent exits, as a forked reader
        burn(0.6)
        os._exit(0)
    time.sleep(0.1)
    burn(0.4)
    print("throughput: 1000.0 examples/s (10 global steps in 0.40 s)", flush=True)
    print("test auc: 0.7500  (100 held-out rows)", flush=True)
""")


@pytest.mark.cluster  # a concurrency or timing run
def test_run_job_waits_for_both_figures_and_counts_every_process(common):
    commands = [("ps0", [sys.executable, "-c", "import time; time.sleep(600)"], {}),
                ("worker0", [sys.executable, "-c", CHIEF], {})]
    figures = common.run_job(commands, timeout=60, grace=10)
    assert figures["throughput"] == 1000.0 and figures["auc"] == 0.75
    # the chief's 0.4 s and its child's 0.6 s (sampled every 0.25 s: up to that much lost)
    assert 0.6 <= figures["cpu_seconds"] <= 3.0
    assert figures["timed_examples"] == pytest.approx(400.0)
    assert 0.0 <= figures["timed_cpu_seconds"] <= figures["cpu_seconds"]


def test_run_job_names_the_missing_figure(common):
    commands = [("worker0", [sys.executable, "-c", "print('throughput: 5 examples/s')"], {})]
    with pytest.raises(RuntimeError, match="no auc"):
        common.run_job(commands, timeout=30)
    assert common.run(commands, timeout=30) == 5.0


@pytest.fixture
def tf_ctr():
    spec = importlib.util.spec_from_file_location("peers_tf_ctr",
                                                  ROOT / "bench" / "peers" / "tf_ctr.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_dynamic_table_runs_with_the_tfra_interpreter(tf_ctr, monkeypatch):
    monkeypatch.setenv("PSFLOW_PEERS_PYTHON", "/peers/python")
    monkeypatch.delenv("PSFLOW_TFRA_PYTHON", raising=False)
    assert tf_ctr.interpreter("buckets") == "/peers/python"
    with pytest.raises(tf_ctr.common.MissingPeer, match="PSFLOW_TFRA_PYTHON is not set"):
        tf_ctr.interpreter("dynamic")  # this interpreter has no TFRA
    monkeypatch.setenv("PSFLOW_TFRA_PYTHON", "/no/such/python")
    with pytest.raises(tf_ctr.common.MissingPeer, match="/no/such/python has no tensorflow_rec"):
        tf_ctr.job("clicks.tsv", table="dynamic")


def test_an_interpreter_must_find_the_named_library(common, monkeypatch):
    monkeypatch.setenv("PSFLOW_TFRA_PYTHON", sys.executable)
    assert common.python("PSFLOW_TFRA_PYTHON", "json") == sys.executable
    with pytest.raises(common.MissingPeer, match=f"PSFLOW_TFRA_PYTHON={sys.executable} has no"):
        common.python("PSFLOW_TFRA_PYTHON", "no_such_library_anywhere")
