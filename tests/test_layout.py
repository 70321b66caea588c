"""Packaging and layering (docs/architecture.md): the top-level folders install as psflow's
subpackages and nothing generic; imports between them point one way; the engine's modules
import each other without a cycle and load no runtime or gRPC when imported; no module is
over 450 lines; a file name says one thing in the whole tree."""

import ast
import collections
import importlib
import importlib.metadata
import os
import pathlib
import subprocess
import sys
import sysconfig

import pytest

SUBPACKAGES = {"psflow.ps": "ps", "psflow.worker": "worker", "psflow.proto": "proto",
               "psflow.transport": "transport", "psflow.launcher": "launcher",
               "psflow.serving": "serving", "psflow.proto.tfserving": "proto/tfserving"}


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
    assert not top_levels & {"ps", "worker", "proto", "transport", "launcher", "serving",
                             "tfserving", "tensorflow", "tests", "examples", "bench"}


def test_a_second_engine_cannot_be_imported():
    for name in ("psflow.psflow", "psflow.examples", "psflow.bench", "psflow.tests"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(name)


# -- dependencies point one way -----------------------------------------------------------------
ROOT = pathlib.Path(__file__).resolve().parent.parent
# The imports of the runtimes from the engine: MonitoredTrainingSession picks the distributed
# session when TF_CONFIG (or a server's target) names a cluster,
ALLOWED = {("psflow/train/monitored_session.py", "psflow.worker.distributed_session"),
           # and a ps task's tf.train.Server.join() serves its shard in that process.
           ("psflow/train/server.py", "psflow.ps.__main__")}
# What each folder may import of psflow's subpackages besides the engine, psflow itself
# (docs/architecture.md): the wire contract stands alone; the transport moves its messages;
# the runtimes use both; the launcher uses everything.
MAY_IMPORT = {
    "psflow": set(),
    "proto": set(),
    "transport": {"psflow.proto"},
    "ps": {"psflow.proto", "psflow.transport"},
    "worker": {"psflow.proto", "psflow.transport"},
    "launcher": {"psflow.proto", "psflow.transport", "psflow.ps", "psflow.worker"},
    # psflow-serve: the engine (and its export format), the wire and the channels; never the
    # training runtimes.
    "serving": {"psflow.proto", "psflow.transport"},
}


OWN = {"psflow": "psflow", "proto": "psflow.proto", "transport": "psflow.transport",
       "ps": "psflow.ps", "worker": "psflow.worker", "launcher": "psflow.launcher",
       "serving": "psflow.serving"}


def module_files():
    """{module name: path} of every module in the folders that install as psflow."""
    modules = {}
    for folder, package in OWN.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            modules[".".join([package, *parts]).removesuffix(".__init__")] = path
    return modules


def imported_modules(path, known):
    """(module, line, at_module_level) of every import in a source file, each resolved to the
    module of `known` it loads: `from psflow import math_ops` loads psflow.math_ops,
    `from psflow.graph import Node` psflow.graph. An import inside a function (or under
    `if TYPE_CHECKING:`) runs later or never: it is not at module level."""
    parts = path.relative_to(ROOT).parts
    package = ".".join([OWN[parts[0]], *parts[1:-1]])
    found = []

    def visit(node, top):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            top = False
        elif isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING",
                                                                      "typing.TYPE_CHECKING"):
            for child in node.orelse:
                visit(child, top)
            for child in node.body:
                visit(child, False)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno, top) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module
            submodules = [f"{module}.{a.name}" for a in node.names
                          if f"{module}.{a.name}" in known]
            if len(submodules) < len(node.names):  # names defined in `module` itself
                found.append((module, node.lineno, top))
            found.extend((sub, node.lineno, top) for sub in submodules)
        for child in ast.iter_child_nodes(node):
            visit(child, top)

    visit(ast.parse(path.read_text()), True)
    return found


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
    modules = module_files()
    wrong = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        relative = str(path.relative_to(ROOT))
        for module, line, _ in imported_modules(path, modules):
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


# -- the engine's modules ----------------------------------------------------------------------
SUB_NAMES = {package.split(".")[1] for package in OWN.values() if package != "psflow"}
# What the engine must not load when it is imported: the runtimes, the wire, gRPC.
NOT_AT_MODULE_LEVEL = [f"psflow.{name}" for name in sorted(SUB_NAMES)] + ["grpc", "google"]


def import_cycles(graph):
    """The import cycles of `graph` ({module: modules it imports}): each strongly connected
    component of more than one module, or of one that imports itself, as a sorted list
    (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []
    nodes = set(graph) | {m for targets in graph.values() for m in targets}
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            for target in targets:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph.get(target, ())))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in graph.get(node, ()):
                        cycles.append(sorted(component))
    return sorted(cycles)


def test_the_cycle_finder_on_a_small_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": set(), "f": {"f"},
             "g": {"h"}, "h": {"g", "a"}}
    assert import_cycles(graph) == [["a", "b", "c"], ["f"], ["g", "h"]]
    assert import_cycles({"a": {"b"}, "b": {"c"}}) == []
    chain = {str(i): {str(i + 1)} for i in range(5000)}  # deep, yet no recursion limit
    chain["5000"] = {"0"}
    assert import_cycles(chain) == [sorted(str(i) for i in range(5001))]


def test_the_engine_s_modules_import_each_other_without_a_cycle():
    """graph -> ops -> gradients -> session -> train, each layer importing only those below
    it, at module level or in a function. A submodule's import of its package's __init__
    (implied by every import of a submodule) is not an edge: the package is loading already."""
    modules = {name: path for name, path in module_files().items()
               if name == "psflow" or name.split(".")[1] not in SUB_NAMES}
    graph = collections.defaultdict(set)
    lines = collections.defaultdict(list)
    for name, path in modules.items():
        for module, line, top in imported_modules(path, modules):
            if module in modules and module != name:
                graph[name].add(module)
                lines[name, module].append(f"{line}{'' if top else ' (in a function)'}")
    cycles = import_cycles(graph)
    report = []
    for cycle in cycles:
        report.append(f"a cycle of {len(cycle)} modules:")
        report.extend(f"  {a} -> {b}: line {', '.join(lines[a, b])}"
                      for a in cycle for b in sorted(graph[a]) if b in cycle)
    assert not cycles, "\n".join(report)


def test_the_engine_imports_no_runtime_and_no_grpc_at_module_level():
    modules = module_files()
    wrong = []
    for path in sorted((ROOT / "psflow").rglob("*.py")):
        for module, line, top in imported_modules(path, modules):
            if top and any(module == m or module.startswith(m + ".")
                           for m in NOT_AT_MODULE_LEVEL):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not wrong, "\n".join(wrong)


# -- files -------------------------------------------------------------------------------------
MAX_LINES = 450
# {path: why it may be longer}: none.
LONG_MODULES: dict[str, str] = {}


def source_files():
    """The modules of the folders that install as psflow, generated stubs aside."""
    return [path for folder in OWN for path in sorted((ROOT / folder).rglob("*.py"))
            if "_pb2" not in path.name]


def test_no_module_is_over_450_lines():
    long = {}
    for path in source_files():
        count = len(path.read_text().splitlines())
        if count > MAX_LINES:
            long[str(path.relative_to(ROOT))] = count
    unexplained = {path: count for path, count in long.items() if path not in LONG_MODULES}
    assert not unexplained, f"modules over {MAX_LINES} lines: {unexplained}"
    stale = sorted(set(LONG_MODULES) - set(long))
    assert not stale, f"exceptions no longer needed: {stale}"


def test_no_two_modules_share_a_file_name():
    places = collections.defaultdict(list)
    for path in source_files():
        if path.name not in ("__init__.py", "__main__.py"):
            places[path.name].append(str(path.relative_to(ROOT)))
    shared = {name: paths for name, paths in places.items() if len(paths) > 1}
    assert not shared, shared
