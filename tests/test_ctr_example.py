"""examples/make_ctr_data.py and examples/ctr.py as users run them: the Criteo format, the
planted truth, training in one process and on two workers and two parameter servers."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import psflow as tf

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SMALL = ("--steps", 200, "--batch-size", 256, "--buckets", 65536, "--hidden", "64,32")


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(*args, timeout=300):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def clicks(tmp_path_factory):
    path = tmp_path_factory.mktemp("ctr") / "clicks.tsv"
    result = run(EXAMPLES / "make_ctr_data.py", path, "--rows", 20000, "--seed", 3)
    assert result.returncode == 0, result.stderr
    truth = float(re.search(r"truth auc: ([0-9.]+)", result.stdout).group(1))
    return path, truth


@pytest.mark.cluster
def test_generated_logs_are_in_the_criteo_format(clicks):
    path, truth = clicks
    lines = path.read_text().splitlines()
    assert len(lines) == 20000
    rows = [line.split("\t") for line in lines]
    assert {len(row) for row in rows} == {40}
    assert {row[0] for row in rows} == {"0", "1"}
    ints = [x for row in rows for x in row[1:14]]
    cats = [x for row in rows for x in row[14:]]
    assert all(x == "" or (x.isdigit()) for x in ints) and "" in ints
    assert all(x == "" or re.fullmatch(r"[0-9a-f]{8}", x) for x in cats) and "" in cats
    assert 0.15 < np.mean([row[0] == "1" for row in rows]) < 0.4
    assert 0.75 < truth < 0.95


def test_the_printed_truth_auc_is_the_exact_area():
    make = load("make_ctr_data")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.random(500) + labels * 0.3, 1)  # many ties
    assert make.exact_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))


def test_workers_share_the_training_lines_exactly_once(tmp_path):
    ctr = load("ctr")
    path = tmp_path / "lines.tsv"
    lines = [f"{i % 2}" + "\t7" * 13 + f"\t{i:x}" * 26 + "\n" for i in range(1000)]
    path.write_text("".join(lines[:-1]) + lines[-1].rstrip("\n"))  # no final newline
    assert ctr.count_lines(str(path)) == 1000
    seen = {}
    with tf.Graph().as_default():
        for worker in range(3):
            train, test = ctr.datasets(str(path), None, 64, 50, 3, worker)
            features, _ = train.make_one_shot_iterator().get_next()
            with tf.Session() as sess:
                seen[worker] = np.concatenate([sess.run(features["C1"]) for _ in range(5)])
        held_out = []
        features, labels = test.make_one_shot_iterator().get_next()
        with tf.Session() as sess:
            while True:
                try:
                    held_out.append(sess.run(features["C26"]))
                except tf.errors.OutOfRangeError:
                    break
    hex_ids = [[int(x, 16) for x in seen[w]] for w in range(3)]
    for worker, ids in enumerate(hex_ids):
        shard = list(range(worker, 900, 3))  # every third of the first 900 lines, repeated
        assert ids == (shard * 2)[:len(ids)]
    assert [int(x, 16) for x in np.concatenate(held_out)] == list(range(900, 1000))


@pytest.mark.cluster
def test_one_process_and_two_workers_reach_the_same_auc(clicks):
    path, truth = clicks
    alone = run(EXAMPLES / "ctr.py", "--data", path, *SMALL)
    assert alone.returncode == 0, alone.stderr[-3000:]
    cluster = run("-m", "psflow.launcher", "--no-progress", "--workers", 2, "--ps", 2,
                  EXAMPLES / "ctr.py", "--data", path, *SMALL)
    assert cluster.returncode == 0, cluster.stdout[-3000:] + cluster.stderr[-3000:]
    for out in (alone.stdout, cluster.stdout):
        assert float(re.search(r"throughput: ([0-9.]+) examples/s", out).group(1)) > 0
    auc_alone = float(re.search(r"test auc: ([0-9.]+)  logloss: ([0-9.]+)",
                                alone.stdout).group(1))
    match = re.search(r"\[worker:0\] test auc: ([0-9.]+)  logloss: ([0-9.]+)", cluster.stdout)
    assert match, cluster.stdout[-3000:]
    assert "[worker:1] test auc" not in cluster.stdout  # the chief reports
    auc_cluster, logloss = float(match.group(1)), float(match.group(2))
    assert auc_alone > 0.65 and auc_cluster > 0.65
    assert abs(auc_cluster - auc_alone) < 0.02
    assert auc_cluster < truth + 0.01 and logloss < 0.6


@pytest.mark.parametrize("line,words", [
    ("1\t2\t3\n", "expected 40"),
    ("1\tfive" + "\t" * 38 + "\n", "five"),
])
def test_a_malformed_line_is_named_by_file_and_line(tmp_path, line, words):
    path = tmp_path / "bad.tsv"
    good = "0" + "\t1" * 13 + "\tab" * 26 + "\n"
    path.write_text(good * 20 + line + good * 5)
    result = run(EXAMPLES / "ctr.py", "--data", path, "--steps", 5, "--batch-size", 8,
                 "--buckets", 100, "--hidden", "4")
    assert result.returncode != 0
    assert words in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"{path}:21" in result.stderr, result.stderr[-2000:]


@pytest.mark.cluster
def test_a_test_file_replaces_the_held_out_tail(clicks, tmp_path):
    path, _ = clicks
    test = tmp_path / "test.tsv"
    made = run(EXAMPLES / "make_ctr_data.py", test, "--rows", 700, "--seed", 4)
    assert made.returncode == 0, made.stderr
    result = run(EXAMPLES / "ctr.py", "--data", path, "--test", test, "--steps", 20,
                 "--batch-size", 128, "--buckets", 4096, "--hidden", "8",
                 "--optimizer", "ftrl", "--table", "buckets")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(700 held-out rows)" in result.stdout


@pytest.mark.cluster
@pytest.mark.parametrize("table", ["dynamic", "buckets"])
def test_the_servable_answers_raw_fields_as_training_computes(clicks, tmp_path, table):
    path, _ = clicks
    export, predictions = tmp_path / "export", tmp_path / "predictions.txt"
    result = run(EXAMPLES / "ctr.py", "--data", path, "--steps", 60, "--batch-size", 256,
                 "--buckets", 65536, "--hidden", "32,16", "--table", table,
                 "--numeric", "buckets" if table == "buckets" else "log",
                 "--export-dir", export, "--predictions", predictions)
    assert result.returncode == 0, result.stderr[-3000:]
    trained = np.loadtxt(predictions)
    lines = path.read_text().splitlines()
    held_out = [line.split("\t") for line in lines[len(lines) - len(lines) // 10:]]
    assert len(trained) == len(held_out) == 2000
    # the raw fields, as a client has them: counts as numbers (empty: 0), categoricals as text
    request = {f"I{i}": np.array([float(row[i] or 0) for row in held_out], np.float32)
               for i in range(1, 14)}
    request.update({f"C{i}": np.array([row[13 + i] for row in held_out])
                    for i in range(1, 27)})
    assert any("" in set(request[f"C{i}"]) for i in range(1, 27))  # missing values too
    predictor = tf.saved_model.Predictor.load(str(export / "1"))
    served = predictor.predict(request)["ctr"]
    assert served.shape == trained.shape
    assert np.max(np.abs(served - trained)) <= 1e-6
    assert np.std(trained) > 0.01  # the rows' predictions differ: the check is not vacuous

