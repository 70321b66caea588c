"""tf.feature_column: each column's output against numpy written out by hand, the hash of
a crossed column against FarmHash, vocabulary files, and a model on every column type that
trains in a local Session."""

import json
import time
import urllib.request

import numpy as np
import pytest

import psflow as tf
from psflow.fingerprint import fingerprint64, fingerprint_cat64

fc = tf.feature_column


@pytest.fixture(autouse=True)
def graph():
    with tf.Graph().as_default() as g:
        yield g


def run(columns, feeds, layer=None):
    """input_layer of `columns` over placeholders fed `feeds` ({key: array})."""
    features = {k: tf.placeholder(tf.as_dtype(np.asarray(v).dtype) if np.asarray(v).dtype.kind
                                  not in "SU" else tf.string, np.asarray(v).shape[:1] + (None,) *
                                  (np.asarray(v).ndim - 1)) for k, v in feeds.items()}
    out = (layer or fc.input_layer)(features, columns)
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        return sess.run(out, {features[k]: v for k, v in feeds.items()}), sess


def fp(strings):
    return fingerprint64(np.array(strings, dtype="S")).astype(np.uint64)


def test_numeric_column_shape_and_normalizer():
    x = np.array([[1.0, 2.0], [3.0, 4.0], [0.0, 9.0]], np.float32)
    out, _ = run([fc.numeric_column("x", shape=2, normalizer_fn=lambda t: t * 2.0 + 1.0)],
                 {"x": x})
    assert np.allclose(out, x * 2 + 1)
    with pytest.raises(ValueError, match="default_value"):
        fc.numeric_column("x", shape=(2,), default_value=[1.0, 2.0, 3.0])


def test_bucketized_column_one_hot():
    age = fc.numeric_column("age")
    out, _ = run([fc.bucketized_column(age, [18, 25, 40])],
                 {"age": np.array([3.0, 18.0, 24.9, 40.0, 70.0], np.float32)})
    want = np.eye(4)[[0, 1, 1, 3, 3]]
    assert np.array_equal(out, want)
    with pytest.raises(ValueError, match="sorted"):
        fc.bucketized_column(age, [3, 1])


def test_hash_bucket_string_and_int_and_ignored_values():
    words = np.array([["a", "bb"], ["", "ccc"]])
    out, _ = run([fc.indicator_column(fc.categorical_column_with_hash_bucket("w", 11))],
                 {"w": words})
    want = np.zeros((2, 11))
    for row, bucket in [(0, fp(["a"])[0] % 11), (0, fp(["bb"])[0] % 11),
                        (1, fp(["ccc"])[0] % 11)]:  # "" is absent, as in TF1
        want[row, int(bucket)] += 1
    assert np.array_equal(out, want)
    ids = np.array([7, -1, 123456], np.int64)  # -1 is absent; integers hash as decimal text
    out, _ = run([fc.indicator_column(
        fc.categorical_column_with_hash_bucket("n", 5, dtype=tf.int64))], {"n": ids})
    want = np.zeros((3, 5))
    want[0, int(fp(["7"])[0] % 5)] = 1
    want[2, int(fp(["123456"])[0] % 5)] = 1
    assert np.array_equal(out, want)


def test_vocabulary_list_oov_buckets_and_default():
    keys = np.array(["b", "zz", "a", "c", "q"])
    oov = fc.categorical_column_with_vocabulary_list("k", ["a", "b", "c"], num_oov_buckets=2)
    out, _ = run([fc.indicator_column(oov)], {"k": keys})
    ids = [1, 3 + int(fp(["zz"])[0] % 2), 0, 2, 3 + int(fp(["q"])[0] % 2)]
    assert np.array_equal(out, np.eye(5)[ids])
    default = fc.categorical_column_with_vocabulary_list("k", ["a", "b", "c"], default_value=2)
    out, _ = run([fc.indicator_column(default)], {"k": keys})
    assert np.array_equal(out, np.eye(3)[[1, 2, 0, 2, 2]])
    dropped = fc.categorical_column_with_vocabulary_list("k", ["a", "b", "c"])  # -1: absent
    out, _ = run([fc.indicator_column(dropped)], {"k": keys})
    assert np.array_equal(out, np.vstack([np.eye(3)[1], 0 * np.eye(3)[0], np.eye(3)[[0, 2]],
                                          np.zeros(3)]))
    ints = fc.categorical_column_with_vocabulary_list("n", [10, 20], num_oov_buckets=1)
    out, _ = run([fc.indicator_column(ints)], {"n": np.array([20, 99, 10], np.int64)})
    assert np.array_equal(out, np.eye(3)[[1, 2, 0]])
    with pytest.raises(ValueError, match="repeats"):
        fc.categorical_column_with_vocabulary_list("k", ["a", "a"])


def test_vocabulary_file_and_a_bad_line(tmp_path):
    good = tmp_path / "vocab.txt"
    good.write_text("red\ngreen\nblue\n")
    column = fc.categorical_column_with_vocabulary_file("c", str(good), num_oov_buckets=1)
    out, _ = run([fc.indicator_column(column)], {"c": np.array(["blue", "red", "pink"])})
    assert np.array_equal(out, np.eye(4)[[2, 0, 3]])
    bad = tmp_path / "bad.txt"
    bad.write_text("red\ngreen\n\nblue\n")
    with pytest.raises(ValueError, match=r"bad\.txt, line 3: empty line"):
        fc.categorical_column_with_vocabulary_file("c", str(bad))
    numbers = tmp_path / "ids.txt"
    numbers.write_text("1\n2\nx3\n")
    with pytest.raises(ValueError, match=r"ids\.txt, line 3: b'x3' is not an integer"):
        fc.categorical_column_with_vocabulary_file("c", str(numbers), dtype=tf.int64)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        fc.categorical_column_with_vocabulary_file("c", str(tmp_path / "missing.txt"))


def test_identity_column_default_and_error():
    column = fc.categorical_column_with_identity("i", 4, default_value=3)
    out, _ = run([fc.indicator_column(column)], {"i": np.array([0, 9, 2], np.int64)})
    assert np.array_equal(out, np.eye(4)[[0, 3, 2]])
    strict = fc.categorical_column_with_identity("i", 4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="id 9 is outside"):
        run([fc.indicator_column(strict)], {"i": np.array([0, 9], np.int64)})


def test_crossed_column_buckets_are_tensorflow_s_hash():
    age = fc.bucketized_column(fc.numeric_column("age"), [30.0])
    cross = fc.crossed_column(["city", age], 1000)
    assert cross.name == "age_bucketized_X_city"
    city = np.array(["paris", "rome"])
    ages = np.array([20.0, 50.0], np.float32)
    out, _ = run([fc.indicator_column(cross)], {"city": city, "age": ages})
    key = np.uint64(0xDECAFCAFFE)
    want = np.zeros((2, 1000))
    for row, (c, bucket) in enumerate([("paris", 0), ("rome", 1)]):
        h = fingerprint_cat64(fingerprint_cat64(key, fp([c])), np.uint64(bucket))
        want[row, int(h[0] % np.uint64(1000))] = 1
    assert np.array_equal(out, want)
    # two values in a row cross with each of the other key's: 2 x 1 entries
    tags = np.array([["a", "b"], ["c", ""]])
    multi = fc.crossed_column(["tags", "city"], 50)
    out, _ = run([fc.indicator_column(multi)], {"tags": tags, "city": city})
    want = np.zeros((2, 50))
    for row, (t, c) in [(0, ("a", "paris")), (0, ("b", "paris")), (1, ("c", "rome"))]:
        h = fingerprint_cat64(fingerprint_cat64(key, fp([t])), fp([c]))
        want[row, int(h[0] % np.uint64(50))] += 1
    assert np.array_equal(out, want)


@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
def test_embedding_column_combiners_with_weights(combiner):
    ids = fc.categorical_column_with_identity("i", 5)
    weighted = fc.weighted_categorical_column(ids, "w")
    table = np.arange(10, dtype=np.float32).reshape(5, 2)
    column = fc.embedding_column(weighted, 2, combiner=combiner,
                                 initializer=tf.constant_initializer(table))
    i = np.array([[1, 3], [4, -1], [-1, -1]], np.int64)
    w = np.array([[2.0, 1.0], [0.5, 9.0], [1.0, 1.0]], np.float32)
    out, _ = run([column], {"i": i, "w": w})
    want = np.zeros((3, 2))
    for row in range(3):
        keep = i[row] >= 0
        rows, weights = table[i[row][keep]], w[row][keep]
        if not keep.any():
            continue
        total = (weights[:, None] * rows).sum(0)
        scale = {"sum": 1.0, "mean": weights.sum(), "sqrtn": np.sqrt((weights ** 2).sum())}
        want[row] = total / scale[combiner]
    assert np.allclose(out, want)


def test_input_layer_sorts_by_name_and_linear_model_sums():
    a = fc.numeric_column("b_num")
    b = fc.indicator_column(fc.categorical_column_with_identity("a_id", 3))
    feeds = {"b_num": np.array([5.0, 6.0], np.float32), "a_id": np.array([2, 0], np.int64)}
    out, _ = run([a, b], feeds)
    assert np.array_equal(out, [[0, 0, 1, 5], [1, 0, 0, 6]])  # a_id_indicator, then b_num
    features = {k: tf.placeholder(tf.as_dtype(v.dtype), (None,)) for k, v in feeds.items()}
    linear = fc.linear_model(features, [a, fc.categorical_column_with_identity("a_id", 3)],
                             units=2)
    assert sorted(v.name for v in tf.global_variables()) == [
        "linear_model/a_id/weights", "linear_model/b_num/weights", "linear_model/bias_weights"]
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        variables = {v.name: v for v in tf.global_variables()}
        sess.run(variables["linear_model/a_id/weights"].assign(
            np.array([[1, 2], [3, 4], [5, 6]], np.float32)))
        sess.run(variables["linear_model/b_num/weights"].assign(np.array([[10, 100]],
                                                                          np.float32)))
        sess.run(variables["linear_model/bias_weights"].assign(np.array([0.5, -0.5],
                                                                        np.float32)))
        got = sess.run(linear, {features[k]: v for k, v in feeds.items()})
    assert np.allclose(got, [[5 + 50 + 0.5, 6 + 500 - 0.5], [1 + 60 + 0.5, 2 + 600 - 0.5]])


def test_sparse_tensor_input_and_errors():
    sp = tf.sparse_placeholder(tf.string, shape=(None, None), name="tags")
    column = fc.indicator_column(fc.categorical_column_with_vocabulary_list("tags", ["x", "y"]))
    out = fc.input_layer({"tags": sp}, [column])
    value = tf.SparseTensorValue([[0, 0], [0, 1], [2, 0]], np.array([b"y", b"x", b"y"]),
                                 [3, 2])
    with tf.Session() as sess:
        assert np.array_equal(sess.run(out, {sp: value}), [[1, 1], [0, 0], [0, 1]])
    with pytest.raises(KeyError, match="feature 'nope' is not in features"):
        fc.input_layer({"tags": sp}, [fc.numeric_column("nope")])
    with pytest.raises(ValueError, match="wrap it in embedding_column"):
        fc.input_layer({"tags": sp}, [fc.categorical_column_with_hash_bucket("tags", 3)])


def test_a_model_on_every_column_type_trains():
    tf.set_random_seed(3)
    rng = np.random.default_rng(0)
    n = 64
    cities = np.array(["paris", "rome", "oslo", "lima"])[rng.integers(0, 4, n)]
    ages = rng.uniform(10, 70, n).astype(np.float32)
    tags = np.array(["a", "b", "c", "", "zz"])[rng.integers(0, 5, (n, 2))]
    uid = rng.integers(0, 6, n).astype(np.int64)
    weight = rng.uniform(0.5, 2.0, n).astype(np.float32)
    label = ((cities == "rome") | (ages > 40)).astype(np.float32)
    feeds = {"city": cities, "age": ages, "tags": tags, "uid": uid, "w": weight}
    features = {k: tf.placeholder(tf.string if v.dtype.kind == "U" else tf.as_dtype(v.dtype),
                                  (None,) * v.ndim) for k, v in feeds.items()}
    age = fc.numeric_column("age", normalizer_fn=lambda x: (x - 40.0) / 20.0)
    age_b = fc.bucketized_column(age, [20.0, 40.0, 60.0])
    city = fc.categorical_column_with_hash_bucket("city", 20)
    vocab = fc.categorical_column_with_vocabulary_list("tags", ["a", "b", "c"],
                                                       num_oov_buckets=1)
    ident = fc.categorical_column_with_identity("uid", 6)
    cross = fc.crossed_column([city, age_b], 40)
    weighted = fc.weighted_categorical_column(fc.categorical_column_with_identity("uid", 6),
                                              "w")
    dynamic = fc.categorical_column_with_embedding("city", ev_option=tf.EmbeddingVariableOption())
    deep = fc.input_layer(features, [
        age, age_b, fc.embedding_column(city, 3, combiner="sum"), fc.indicator_column(vocab),
        fc.embedding_column(ident, 2, combiner="sqrtn"), fc.indicator_column(cross)])
    deep_w = tf.get_variable("deep_w", (deep.shape[1], 1), initializer=tf.zeros_initializer())
    wide = fc.linear_model(features, [age_b, vocab, cross, weighted])
    with tf.variable_scope("dyn"):
        dyn = fc.input_layer(features, [fc.embedding_column(dynamic, 2)])
    logits = tf.reshape(tf.matmul(deep, deep_w) + wide + tf.reduce_sum(dyn, axis=1,
                                                                     keepdims=True), (-1,))
    y = tf.placeholder(tf.float32, (None,))
    loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits))
    train = tf.train.AdagradOptimizer(0.3).minimize(loss)
    feed = {features[k]: v for k, v in feeds.items()}
    feed[y] = label
    names = sorted(v.name for v in tf.global_variables())
    assert "dyn/input_layer/city_embedding/embedding_weights" in names
    assert "input_layer/city_embedding/embedding_weights" in names
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        first = sess.run(loss, feed)
        for _ in range(150):
            sess.run(train, feed)
        last, predicted = sess.run([loss, logits], feed)
        table = sess.run(tf.get_default_graph().get_node_by_name(
            "input_layer/uid_embedding/embedding_weights"))
    assert first == pytest.approx(np.log(2), abs=0.05)
    assert last < 0.2 < first
    assert np.mean((predicted > 0) == (label > 0.5)) >= 0.95
    assert table.shape == (6, 2) and np.abs(table).sum() > 0


def export_columns_model(export_dir):
    """Trains a model on every column type a few steps, exports it taking the raw features,
    and returns (raw rows, what the training graph computes for them)."""
    tf.set_random_seed(1)
    rows = {"city": np.array(["paris", "rome", "", "oslo"]),
            "age": np.array([20.0, 50.0, 30.0, 70.0], np.float32),
            "tags": np.array([["a", "zz"], ["b", ""], ["", ""], ["c", "a"]]),
            "uid": np.array([1, 3, 0, 5], np.int64)}
    features = {k: tf.placeholder(tf.string if v.dtype.kind == "U" else tf.as_dtype(v.dtype),
                                  (None,) * v.ndim, name=k) for k, v in rows.items()}
    age = fc.numeric_column("age", normalizer_fn=lambda x: tf.log(x + 1.0))
    age_b = fc.bucketized_column(age, [25.0, 45.0])
    city = fc.categorical_column_with_hash_bucket("city", 10)
    vocab = fc.categorical_column_with_vocabulary_list("tags", ["a", "b", "c"],
                                                       num_oov_buckets=1)
    cross = fc.crossed_column([city, age_b], 40)
    deep = fc.input_layer(features, [
        age, age_b, fc.embedding_column(city, 3), fc.indicator_column(vocab),
        fc.embedding_column(fc.categorical_column_with_identity("uid", 6), 2, combiner="sqrtn"),
        fc.indicator_column(cross)])
    with tf.variable_scope("dyn"):
        dynamic = fc.input_layer(features, [
            fc.embedding_column(fc.categorical_column_with_embedding("city"), 2)])
    wide = fc.linear_model(features, [age_b, vocab, cross, fc.weighted_categorical_column(
        fc.categorical_column_with_identity("uid", 6), "age")])
    out = tf.reduce_sum(deep, axis=1) + tf.reshape(wide, (-1,)) + tf.reduce_sum(dynamic,
                                                                                axis=1)
    train = tf.train.AdagradOptimizer(0.1).minimize(tf.reduce_mean(tf.square(out - 1.0)))
    feed = {features[k]: v for k, v in rows.items()}
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        for _ in range(5):
            sess.run(train, feed)
        want = sess.run(out, feed)
        tf.saved_model.simple_save(sess, export_dir, inputs=features, outputs={"y": out})
    return rows, want


def test_an_exported_model_predicts_from_raw_rows_what_training_computes(tmp_path):
    rows, want = export_columns_model(str(tmp_path / "1"))
    predictor = tf.saved_model.Predictor.load(str(tmp_path / "1"))
    assert np.array_equal(predictor.predict(rows)["y"], want)
    as_bytes = dict(rows, city=np.char.encode(rows["city"]), tags=rows["tags"].astype(object))
    assert np.array_equal(predictor.predict(as_bytes)["y"], want)
    with pytest.raises(tf.errors.InvalidArgumentError, match="'city' has dtype float64"):
        predictor.predict(dict(rows, city=np.array([1.0, 2.0, 3.0, 4.0])))


def test_psflow_serve_answers_raw_rows_as_training_computes(tmp_path):
    from psflow.serving.model_config import ModelSettings
    from psflow.serving.model_server import ModelServer

    rows, want = export_columns_model(str(tmp_path / "ctr" / "1"))
    server = ModelServer([ModelSettings("ctr", str(tmp_path / "ctr"))], port=0, rest_port=0,
                         poll_wait_seconds=0.05, host="127.0.0.1")
    server.start()
    try:
        deadline = time.monotonic() + 10
        while not server.core.available and time.monotonic() < deadline:
            time.sleep(0.02)
        body = json.dumps({"inputs": {k: v.tolist() for k, v in rows.items()}}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.rest_api_port}/v1/models/ctr:predict", data=body,
            method="POST")
        with urllib.request.urlopen(request, timeout=10) as answer:
            got = np.array(json.loads(answer.read())["outputs"], np.float32)
    finally:
        server.stop(grace=1)
    assert np.array_equal(got, want)


def test_a_model_on_columns_trains_through_parameter_servers_as_locally(graph):
    from psflow.ps.shard_server import ParameterServer
    from psflow.train.cluster import ClusterSpec, TaskConfig
    from psflow.worker.distributed_session import DistributedSession

    tf.set_random_seed(5)
    rng = np.random.default_rng(1)
    batches = [{"city": np.array(["paris", "rome", "oslo", "lima", ""])[rng.integers(0, 5, 16)],
                "age": rng.uniform(10, 70, 16).astype(np.float32),
                "uid": rng.integers(0, 10**12, 16).astype(np.int64)} for _ in range(4)]
    labels = [rng.uniform(0, 1, 16).astype(np.float32) for _ in range(4)]
    features = {"city": tf.placeholder(tf.string, (None,)),
                "age": tf.placeholder(tf.float32, (None,)),
                "uid": tf.placeholder(tf.int64, (None,))}
    age_b = fc.bucketized_column(fc.numeric_column("age"), [30.0, 50.0])
    city = fc.categorical_column_with_hash_bucket("city", 8)
    deep = fc.input_layer(features, [
        fc.embedding_column(city, 3),
        fc.embedding_column(fc.categorical_column_with_embedding("uid", dtype=tf.int64), 2)])
    wide = fc.linear_model(features, [age_b, fc.crossed_column([city, age_b], 16)])
    logits = tf.reduce_sum(deep, axis=1) + tf.reshape(wide, (-1,))
    y = tf.placeholder(tf.float32, (None,))
    loss = tf.reduce_mean(tf.square(logits - y))
    train = tf.train.AdagradOptimizer(0.3).minimize(loss)
    fixed = [v for v in tf.global_variables() if not v.is_table]

    def feed(i):
        return {**{features[k]: v for k, v in batches[i].items()}, y: labels[i]}

    with tf.Session() as local:
        local.run(tf.global_variables_initializer())
        for i in range(4):
            local.run(train, feed(i))
        expected = local.run([logits] + fixed, feed(0))
    servers = [ParameterServer(shard=i, num_workers=1).start() for i in range(2)]
    try:
        cluster = ClusterSpec({"ps": [f"127.0.0.1:{s.port}" for s in servers],
                               "worker": ["127.0.0.1:0"]})
        session = DistributedSession(graph, TaskConfig(cluster, "worker", 0))
        try:
            for i in range(4):
                session.run(train, feed(i))
            got = session.run([logits] + fixed, feed(0))
        finally:
            session.close()
    finally:
        for server in servers:
            server.stop(grace=0)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert np.abs(expected[0]).sum() > 0
