"""Packaging and layering: the top-level folders install as psflow's subpackages and nothing
generic; imports between them point one way (DESIGN.md)."""

import ast
import importlib
import importlib.metadata
import os
import pathlib
import subprocess
import sys
import sysconfig

import pytest

SUBPACKAGES = {"psflow.ps": "ps", "psflow.worker": "worker", "psflow.proto": "proto",
               "psflow.launcher": "launcher"}


@pytest.mark.parametrize("module,folder", sorted(SUBPACKAGES.items()))
def test_top_level_folders_import_as_psflow_subpackages(module, folder):
    package = importlib.import_module(module)
    assert pathlib.Path(package.__file__).parent.name in (folder, module.split(".")[-1])


def test_nothing_generic_is_installed_at_the_top_of_site_packages():
    # Look in site-packages only: a source checkout holds an in-tree psflow.egg-info that lists
    # the folders by their checkout names.
    site = sysconfig.get_paths()["purelib"]
    dists = list(importlib.metadata.distributions(name="psflow", path=[site]))
    if not dists:
        pytest.skip(f"psflow is not installed in {site}")
    files = dists[0].files or []
    assert files, "the installed psflow lists no files"
    top_levels = {f.parts[0] for f in files if f.suffix == ".py"}
    assert not top_levels & {"ps", "worker", "proto", "launcher", "tests", "examples", "bench"}


def test_a_second_engine_cannot_be_imported():
    for name in ("psflow.psflow", "psflow.examples", "psflow.bench", "psflow.tests"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(name)


# -- dependencies point one way -----------------------------------------------------------------
ROOT = pathlib.Path(__file__).resolve().parent.parent
# The imports of the runtimes from the engine: MonitoredTrainingSession picks the distributed
# session when TF_CONFIG (or a server's target) names a cluster,
ALLOWED = {("psflow/train/monitored_session.py", "psflow.worker.session"),
           # and a ps task's tf.train.Server.join() serves its shard in that process.
           ("psflow/train/server.py", "psflow.ps.__main__")}
# What each folder may import of psflow's subpackages (DESIGN.md's layout).
MAY_IMPORT = {
    "psflow": set(),
    "proto": set(),
    "ps": {"psflow.proto"},
    "worker": {"psflow.proto"},
    "launcher": {"psflow.proto", "psflow.ps", "psflow.worker"},
}


OWN = {"psflow": "psflow", "proto": "psflow.proto", "ps": "psflow.ps",
       "worker": "psflow.worker", "launcher": "psflow.launcher"}


def _imports(path):
    """(module, line) of every import in a source file, relative ones made absolute."""
    parts = path.relative_to(ROOT).parts
    package = ".".join([OWN[parts[0]], *parts[1:-1]])
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module
            yield module, node.lineno
            for alias in node.names:  # `from psflow import ps` imports psflow.ps
                yield f"{module}.{alias.name}", node.lineno


@pytest.mark.parametrize("folder", sorted(MAY_IMPORT))
def test_dependencies_point_one_way(folder):
    own = OWN[folder]
    forbidden = [sub for sub in OWN.values() if sub not in (own, "psflow")
                 and sub not in MAY_IMPORT[folder]]
    if folder == "psflow":
        forbidden += ["grpc", "google"]
    if folder == "proto":  # the wire contract stands alone
        forbidden += [f"psflow.{p.stem}" for p in (ROOT / "psflow").iterdir()
                      if p.suffix == ".py" or (p / "__init__.py").exists()]
    wrong = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        relative = str(path.relative_to(ROOT))
        for module, line in _imports(path):
            allowed = any(relative == where and (module == what or module.startswith(what + "."))
                          for where, what in ALLOWED)
            if not allowed and any(module == f or module.startswith(f + ".") for f in forbidden):
                wrong.append(f"{relative}:{line} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_the_engine_and_local_training_load_neither_grpc_nor_protobuf():
    script = """
import sys
import numpy as np
import psflow as tf
x = tf.placeholder(tf.float32, (None, 2))
w = tf.Variable(tf.zeros((2, 1)))
loss = tf.reduce_mean(tf.square(x @ w - 1.0))
train = tf.train.GradientDescentOptimizer(0.1).minimize(
    loss, global_step=tf.train.get_or_create_global_step())
with tf.train.MonitoredTrainingSession(
        hooks=[tf.train.StopAtStepHook(last_step=5)]) as sess:
    while not sess.should_stop():
        sess.run(train, {x: np.ones((4, 2))})
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("grpc", "google")
                or m.startswith(("psflow.ps", "psflow.worker", "psflow.proto")))
print("LOADED", loaded)
"""
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "LOADED []" in out.stdout, out.stdout
