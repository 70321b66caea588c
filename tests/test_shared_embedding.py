"""shared_embedding_columns: one table read by several fields, checked against numpy written
out by hand (lookups, mean combine, gradients), the fused lookup of adjacent columns against
one lookup per column, hash-keyed tables, export, and the errors; segment_sum, the combine's
kernel, against np.add.at."""

import numpy as np
import pytest

import psflow as tf
from psflow.fingerprint import fingerprint64
from psflow.sparse_ops import segment_sum

fc = tf.feature_column

ROWS = {"a": np.array([["x", "y"], ["", ""], ["z", "x"], ["y", ""]]),
        "b": np.array([["y", ""], ["q", "q"], ["", ""], ["x", "w"]]),
        "n": np.array([1.0, 2.0, 3.0, 4.0], np.float32)}
BUCKETS = 7


@pytest.fixture(autouse=True)
def graph():
    with tf.Graph().as_default() as g:
        yield g


def placeholders(rows):
    return {k: tf.placeholder(tf.string if v.dtype.kind == "U" else tf.float32,
                              (None,) * v.ndim, name=k) for k, v in rows.items()}


def by_hand(table, values, weights_out):
    """Each row's mean of its non-empty values' rows of `table` (Fingerprint64 % BUCKETS),
    and, into `weights_out` (a table-shaped gradient), d(sum(out * g))/d table for `g`."""
    out = np.zeros((len(values), table.shape[1]), np.float64)
    for r, row in enumerate(values):
        present = [v for v in row if v]
        if not present:
            continue
        ids = fingerprint64(np.array(present, dtype="S")).astype(np.uint64) % BUCKETS
        out[r] = table[ids.astype(np.int64)].mean(axis=0)
        if weights_out is not None:
            for i in ids.astype(np.int64):
                weights_out[1][i] += weights_out[0][r] / len(present)
    return out


def test_shared_columns_read_one_table_and_train_as_written_by_hand():
    features = placeholders(ROWS)
    cats = [fc.categorical_column_with_hash_bucket(k, BUCKETS) for k in ("b", "a")]
    shared = fc.shared_embedding_columns(cats, 3, initializer=tf.random_normal_initializer(
        seed=2))
    assert [c.name for c in shared] == ["b_shared_embedding", "a_shared_embedding"]
    out = fc.input_layer(features, shared + [fc.numeric_column("n")])
    g = np.random.default_rng(0).normal(size=(4, 7)).astype(np.float32)
    train = tf.train.GradientDescentOptimizer(1.0).minimize(tf.reduce_sum(out * g))
    (table_var,) = tf.global_variables()
    assert table_var.name == "input_layer/a_b_shared_embedding/embedding_weights"
    feed = {features[k]: v for k, v in ROWS.items()}
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        table = sess.run(table_var)
        got = sess.run(out, feed)
        sess.run(train, feed)
        after = sess.run(table_var)
    # Sorted by name: a's block, b's block, then n.
    grad = np.zeros_like(table, dtype=np.float64)
    want_a = by_hand(table, ROWS["a"], (g[:, 0:3], grad))
    want_b = by_hand(table, ROWS["b"], (g[:, 3:6], grad))
    assert np.allclose(got, np.concatenate([want_a, want_b, ROWS["n"][:, None]], axis=1),
                       atol=1e-6)
    assert np.allclose(after, table - grad, atol=1e-5)


def test_a_run_of_shared_columns_is_one_lookup_and_equals_a_lookup_per_column():
    features = placeholders(ROWS)
    for kind in ("buckets", "keys"):
        with tf.variable_scope(kind):
            if kind == "buckets":
                cats = [fc.categorical_column_with_hash_bucket(k, BUCKETS) for k in ("a", "b")]
            else:
                cats = [fc.categorical_column_with_embedding(k) for k in ("a", "b")]
            shared = fc.shared_embedding_columns(cats, 4, combiner="sqrtn")
            fused = fc.input_layer(features, shared)
            alone = tf.concat([fc.input_layer(features, [c]) for c in shared], axis=1)
            # A column named between them ("a_shared_embedding" < "ab" < "b_...") splits the
            # run in two.
            split = fc.input_layer(dict(features, ab=features["n"]),
                                   shared + [fc.numeric_column("ab")])
            # A step first, so that a hash-keyed table has rows for the keys.
            warm = tf.train.GradientDescentOptimizer(0.5).minimize(tf.reduce_sum(fused))
        lookups = [n for n in tf.get_default_graph().nodes if type(n).__name__ == "Gather"
                   and n.name.startswith(f"{kind}/input_layer") and n.dtype == tf.float32]
        assert len(lookups) == 1 + 2 + 2  # fused: one; alone and split: one per column
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            feed = {features[k]: v for k, v in ROWS.items()}
            sess.run(warm, feed)
            fused_v, alone_v, split_v = sess.run([fused, alone, split], feed)
        assert fused_v.shape == (4, 8)
        assert np.allclose(fused_v, alone_v, atol=1e-6)
        assert np.allclose(split_v[:, :4], fused_v[:, :4], atol=1e-6)
        assert np.allclose(split_v[:, 4], ROWS["n"]) and np.allclose(split_v[:, 5:],
                                                                    fused_v[:, 4:], atol=1e-6)
        assert np.abs(fused_v[1, :4]).sum() == 0 and np.abs(fused_v[1, 4:]).sum() > 0


def test_a_shared_model_exports_and_predicts_raw_rows_as_training(tmp_path):
    features = placeholders(ROWS)
    shared = fc.shared_embedding_columns(
        [fc.categorical_column_with_embedding(k) for k in ("a", "b")], 2)
    out = tf.reduce_sum(fc.input_layer(features, shared), axis=1)
    train = tf.train.AdagradOptimizer(0.2).minimize(tf.reduce_mean(tf.square(out - 1.0)))
    feed = {features[k]: v for k, v in ROWS.items()}
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        for _ in range(3):
            sess.run(train, feed)
        want = sess.run(out, feed)
        tf.saved_model.simple_save(sess, str(tmp_path / "1"), inputs=features,
                                   outputs={"y": out})
    predictor = tf.saved_model.Predictor.load(str(tmp_path / "1"))
    assert np.array_equal(predictor.predict(ROWS)["y"], want)


def test_shared_embedding_columns_errors_name_the_problem():
    hashed = fc.categorical_column_with_hash_bucket("a", 5)
    with pytest.raises(ValueError, match="same number of buckets.*a: 5, b: 6"):
        fc.shared_embedding_columns([hashed, fc.categorical_column_with_hash_bucket("b", 6)], 2)
    with pytest.raises(ValueError, match="not a mix"):
        fc.shared_embedding_columns([hashed, fc.categorical_column_with_embedding("b")], 2)
    with pytest.raises(ValueError, match="non-empty list"):
        fc.shared_embedding_columns([], 2)
    with pytest.raises(ValueError, match="not a categorical column"):
        fc.shared_embedding_columns([fc.numeric_column("n")], 2)
    with pytest.raises(ValueError, match="given twice"):
        fc.shared_embedding_columns([hashed, hashed], 2)
    with pytest.raises(ValueError, match="dimension must be a positive integer"):
        fc.shared_embedding_columns([hashed], 0)
    with pytest.raises(ValueError, match="combiner must be one of"):
        fc.shared_embedding_columns([hashed], 2, combiner="max")


@pytest.mark.parametrize("case", ["unique sorted", "unique shuffled", "repeats sorted",
                                  "repeats shuffled", "empty"])
def test_segment_sum_equals_add_at(case):
    rng = np.random.default_rng(4)
    count = 9
    rows = {"unique sorted": np.array([0, 2, 3, 8]),
            "unique shuffled": np.array([8, 0, 3, 2]),
            "repeats sorted": np.array([0, 0, 1, 4, 4, 4, 8]),
            "repeats shuffled": rng.integers(0, count, 40),
            "empty": np.zeros(0, np.int64)}[case]
    values = rng.normal(size=(len(rows), 3)).astype(np.float32)
    want = np.zeros((count, 3), np.float32)
    np.add.at(want, rows, values)
    assert np.allclose(segment_sum(values, rows, count), want, atol=1e-6)


def test_a_weighted_column_in_a_shared_run_combines_as_alone():
    rows = {"a": ROWS["a"], "b": ROWS["b"],
            "w": np.array([[2.0, 1.0], [1.0, 1.0], [0.5, 3.0], [1.0, 0.0]], np.float32)}
    features = placeholders(rows)
    weighted = fc.weighted_categorical_column(fc.categorical_column_with_hash_bucket("a", 7),
                                              "w")
    shared = fc.shared_embedding_columns([weighted, fc.categorical_column_with_hash_bucket(
        "b", 7)], 3, initializer=tf.random_normal_initializer(seed=4))
    fused = fc.input_layer(features, shared)
    alone = tf.concat([fc.input_layer(features, [c]) for c in shared], axis=1)
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        table = sess.run(tf.global_variables()[0])
        fused_v, alone_v = sess.run([fused, alone], {features[k]: v for k, v in rows.items()})
    # Row 0 of a: ids of "x" and "y" weighted 2 and 1, their weighted mean.
    ids = (fingerprint64(np.array(["x", "y"], "S")).astype(np.uint64) % 7).astype(np.int64)
    assert np.allclose(fused_v[0, :3], (2 * table[ids[0]] + table[ids[1]]) / 3, atol=1e-6)
    assert np.allclose(fused_v, alone_v, atol=1e-6)
