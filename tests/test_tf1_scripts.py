"""TF1 training scripts of the usual kinds (tests/tf1_scripts/) run on psflow with only their
imports changed: `import tensorflow as tf` became `import psflow as tf`, and MNIST's reader
became `input_data`, which serves scikit-learn's digits in MNIST's shape. Every other line is
TensorFlow 1.x code, checked against TF1's public API names. The local scripts run as plain
processes, the distributed ones under `launch` in async and sync mode (their ps tasks as
psflow's parameter servers or as the script's own tf.train.Server), and one on the simulated
Kubernetes cluster; each must reach its accuracy."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "tf1_scripts"
CORPUS = sorted(p.name for p in SCRIPTS.glob("*.py") if p.name != "input_data.py")
# TF1's public API (its golden API files): module, class and function names.
TF1_NAMES = set((SCRIPTS / "tf1_api_names.txt").read_text().split())
# tf.contrib is not in TF1's golden API files; these are the contrib names the corpus uses.
TF1_CONTRIB = {"tf.contrib", "tf.contrib.framework",
               "tf.contrib.framework.get_or_create_global_step"}
# The one changed import, and the reader that stands in for MNIST's.
IMPORTS = {"import psflow as tf", "import input_data"}


def tf_names(tree):
    """Every dotted name `tf.a.b...` the script reads, as written."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain = []
            inner = node
            while isinstance(inner, ast.Attribute):
                chain.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id == "tf":
                names.add(".".join(["tf", *reversed(chain)]))
    return names


def test_the_corpus_has_ten_scripts_of_the_usual_kinds():
    assert len(CORPUS) >= 10, CORPUS
    assert len(TF1_NAMES) > 1000  # the list is TF1's whole API, not the corpus's


@pytest.mark.parametrize("name", CORPUS)
def test_a_script_is_tf1_code_with_only_its_imports_changed(name):
    text = (SCRIPTS / name).read_text()
    changed = [line.strip() for line in text.splitlines()
               if "psflow" in line or re.match(r"\s*(import|from)\s+input_data", line)]
    assert changed and set(changed) <= IMPORTS, changed
    assert "import psflow as tf" in changed
    unknown = []
    for dotted in sorted(tf_names(ast.parse(text))):
        parts = dotted.split(".")
        # Check each prefix the TF1 API lists as a module or class; past one that is a
        # function or a value (tf.placeholder(...).shape), the rest is not an API name.
        for end in range(2, len(parts) + 1):
            prefix = ".".join(parts[:end])
            if prefix not in TF1_NAMES and prefix not in TF1_CONTRIB:
                unknown.append(dotted)
                break
            if not any(n.startswith(prefix + ".") for n in TF1_NAMES | TF1_CONTRIB):
                break
    assert not unknown, f"{name} uses names TF1 does not have: {unknown}"


def run_script(name, *args, cwd):
    result = subprocess.run([sys.executable, str(SCRIPTS / name), *map(str, args)],
                            capture_output=True, text=True, timeout=300, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def accuracy_of(out, pattern=r"test accuracy:? ([0-9.]+)"):
    found = re.findall(pattern, out)
    assert found, out[-3000:]
    return float(found[-1])


@pytest.mark.cluster
@pytest.mark.parametrize("name,args,floor", [
    ("mnist_softmax.py", (), 0.9),
    ("mnist_first_steps.py", (), 0.9),
    ("mnist_deep.py", ("--steps", 200, "--conv1", 8, "--conv2", 16, "--hidden", 128), 0.93),
    ("layers_cnn.py", ("--steps", 150, "--batch_size", 32), 0.9),
])
def test_a_local_script_reaches_its_accuracy(tmp_path, name, args, floor):
    assert accuracy_of(run_script(name, *args, cwd=tmp_path)) >= floor


def scalars(logdir):
    """{tag: [(step, value)]} of the TensorBoard event files in `logdir`, read by TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(logdir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


@pytest.mark.cluster
def test_summaries_written_by_the_script_are_read_by_tensorboard(tmp_path):
    out = run_script("scoped_mlp.py", "--log_dir", tmp_path / "logs", cwd=tmp_path)
    assert accuracy_of(out) >= 0.93
    found = scalars(tmp_path / "logs" / "train")
    assert [step for step, _ in found["loss"]] == list(range(50, 401, 50))
    assert found["loss"][-1][1] < found["loss"][0][1] / 3
    assert len(found["gradient_norm"]) == 8


@pytest.mark.cluster
def test_monitored_session_resumes_and_writes_summaries(tmp_path):
    out = run_script("monitored_local.py", "--checkpoint_dir", tmp_path / "ckpt", cwd=tmp_path)
    assert "resumed at step 300" in out
    assert accuracy_of(out) >= 0.93
    loss = scalars(tmp_path / "ckpt")["loss"]
    steps = [step for step, _ in loss]
    # Written by both sessions' hooks every 50 steps (each session's first run too).
    assert steps[0] <= 1 and steps[-1] >= 550 and len(steps) >= 12, steps


def launch(tmp_path, *args, timeout=240):
    result = subprocess.run(
        [sys.executable, "-m", "psflow.launcher", "--no-progress", "--checkpoint-root",
         str(tmp_path), *map(str, args)], capture_output=True, text=True, timeout=timeout,
        cwd=tmp_path, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-4000:]
    assert re.search(r"1 of 1 parameter servers exited by themselves", result.stderr), \
        result.stderr[-2000:]
    return result.stdout + result.stderr


# (script, launch options, script arguments, accuracy floor)
DISTRIBUTED = [
    ("distributed_howto.py", ("--script-ps",), ("--checkpoint_dir", "{tmp}/logs"), 0.93),
    ("mnist_replica.py", ("--tf-flags",), (), 0.93),
    ("supervisor_managed.py", ("--script-ps",), ("--logdir", "{tmp}/logs"), 0.93),
    # plain SGD at learning rate 0.5, read after its last async step: typically 0.96-0.98,
    # one run in several hundred dips below 0.9
    ("tf_config_session.py", (), (), 0.85),
]


@pytest.mark.cluster
@pytest.mark.parametrize("mode", ["async", "sync"])
@pytest.mark.parametrize("name,options,args,floor", DISTRIBUTED,
                         ids=[d[0] for d in DISTRIBUTED])
def test_a_distributed_script_trains_under_launch(tmp_path, name, options, args, floor, mode):
    args = [a.format(tmp=tmp_path) for a in args]
    if name == "mnist_replica.py" and mode == "sync":
        args.append("--sync_replicas")  # the script's own SyncReplicasOptimizer
        mode_options = ()
    else:
        mode_options = ("--mode", mode)
    out = launch(tmp_path, "--workers", 2, "--ps", 1, *mode_options, *options,
                 SCRIPTS / name, *args)
    assert accuracy_of(out) >= floor
    # The launcher's summary, or (when shard 0 had exited before its last look, which then
    # says "last seen at global step N") shard 0's own stopping line.
    global_step = max(int(s) for s in re.findall(r"global step (\d+)", out))
    assert global_step >= 400


@pytest.mark.cluster
def test_a_classic_flags_script_takes_its_cluster_from_tf_config(tmp_path):
    # No --tf-flags: tf.app.flags fills --ps_hosts, --worker_hosts, --job_name and
    # --task_index from TF_CONFIG, as on Kubernetes.
    out = launch(tmp_path, "--workers", 2, "--ps", 1, SCRIPTS / "mnist_replica.py")
    assert "job name = worker" in out and "task index = 1" in out
    # async SGD read after the last step: typically 0.95-0.97, once 0.906 on a loaded machine
    assert accuracy_of(out, r"test accuracy ([0-9.]+)") >= 0.88


@pytest.mark.cluster
def test_supervisor_summaries_reach_tensorboard(tmp_path):
    launch(tmp_path, "--workers", 2, "--ps", 1, "--script-ps", SCRIPTS / "supervisor_managed.py",
           "--logdir", tmp_path / "logs")
    found = scalars(tmp_path / "logs")
    assert len(found["cost"]) >= 2, found  # the first run's and the script's own
    assert found["cost"][-1][1] < found["cost"][0][1]


@pytest.mark.cluster
def test_a_kubernetes_style_script_trains_on_the_simulated_cluster(tmp_path):
    from test_k8s_cluster import REASON, explain, run_on_simulated_cluster
    if REASON is not None:
        pytest.skip(REASON)
    codes, logs = run_on_simulated_cluster(
        tmp_path, "--workers", "2", "--ps", "1",
        str((SCRIPTS / "tf_config_session.py").relative_to(ROOT)))
    assert all(code == 0 for code in codes.values()), explain(codes, logs)
    assert accuracy_of(logs["sim-worker-0"]) >= 0.9, explain(codes, logs)
    assert "exiting: all workers are done" in logs["sim-ps-0"], explain(codes, logs)
