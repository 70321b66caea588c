"""Servables (psflow.saved_model): what a Predictor and loader.load compute equals what the
training graph computes on the same inputs; the format refuses damaged files by name, never
names a class outside psflow's ops, and versions appear whole."""

import json
import os
import threading

import numpy as np
import pytest

import psflow as tf
from psflow.errors import DataLossError, InvalidArgumentError, NotFoundError
from psflow.saved_model import Predictor, loader, signature_constants, tag_constants

RNG = np.random.default_rng(0)


def dense(x, fan_in, fan_out, name, activation=None):
    w = tf.get_variable(f"{name}/w", shape=(fan_in, fan_out))
    b = tf.Variable(tf.zeros((fan_out,)) + 0.1, name=f"{name}/b")
    out = x @ w + b
    return activation(out) if activation else out


def trained(build, feeds, steps=3):
    """(graph, session, inputs, outputs) of a model built by build() -> (inputs, outputs,
    loss), after a few training steps on feeds() -> feed dict."""
    graph = tf.Graph()
    with graph.as_default():
        inputs, outputs, loss = build()
        train = tf.train.AdagradOptimizer(0.1).minimize(
            loss, global_step=tf.train.get_or_create_global_step())
        sess = tf.Session(graph=graph)
        sess.run(tf.global_variables_initializer())
        for _ in range(steps):
            sess.run(train, feeds(inputs))
    return graph, sess, inputs, outputs


def mlp():
    x = tf.placeholder(tf.float32, (None, 64), name="images")
    labels = tf.placeholder(tf.int64, (None,), name="labels")
    hidden = dense(x, 64, 32, "hidden1", tf.nn.relu)
    logits = dense(hidden, 32, 10, "logits")
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels,
                                                                         logits=logits))
    return {"images": x, "labels": labels}, {"probs": tf.nn.softmax(logits),
                                             "classes": tf.argmax(logits, 1)}, loss


def mlp_feeds(inputs):
    return {inputs["images"]: RNG.random((16, 64)), inputs["labels"]: RNG.integers(0, 10, 16)}


def cnn():
    x = tf.placeholder(tf.float32, (None, 64), name="images")
    labels = tf.placeholder(tf.int64, (None,), name="labels")
    h = tf.reshape(x, (-1, 8, 8, 1))
    kernel = tf.get_variable("conv/kernel", shape=(3, 3, 1, 4))
    h = tf.nn.relu(tf.nn.conv2d(h, kernel, strides=1, padding="SAME") + 0.05)
    h = tf.nn.max_pool(h, ksize=2, strides=2, padding="VALID")
    logits = dense(tf.reshape(h, (-1, 4 * 4 * 4)), 64, 10, "logits")
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels,
                                                                         logits=logits))
    return {"images": x, "labels": labels}, {"logits": logits}, loss


def ctr():
    """A CTR model: a multi-hot feature through a dynamic table (embedding_lookup_sparse),
    one id through the same table (embedding_lookup), a dense tower, a sigmoid."""
    table = tf.get_embedding_variable("features", embedding_dim=4,
                                      initializer=tf.random_normal_initializer(0.0, 0.5))
    sp = tf.sparse_placeholder(tf.int64, shape=(None, None), name="multi")
    user = tf.placeholder(tf.int64, (None,), name="user")
    label = tf.placeholder(tf.float32, (None,), name="label")
    pooled = tf.nn.embedding_lookup_sparse(table, sp, None, combiner="mean")
    user_emb = tf.nn.embedding_lookup(table, user)
    logit = tf.squeeze(dense(tf.concat([pooled, user_emb], axis=1), 8, 1, "tower"), axis=1)
    loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=label, logits=logit))
    inputs = {"multi_indices": sp.indices, "multi_values": sp.values,
              "multi_shape": sp.dense_shape, "user": user, "label": label}
    return inputs, {"ctr": tf.sigmoid(logit), "user_embedding": user_emb}, loss


def ctr_feeds(inputs, keys=range(1, 20), batch=8):
    keys = np.asarray(list(keys))
    indices = np.array([[r, c] for r in range(batch) for c in range(2)], dtype=np.int64)
    return {inputs["multi_indices"]: indices,
            inputs["multi_values"]: RNG.choice(keys, len(indices)),
            inputs["multi_shape"]: np.array([batch, 2]),
            inputs["user"]: RNG.choice(keys, batch),
            inputs["label"]: RNG.integers(0, 2, batch).astype(np.float32)}


def serving_inputs(inputs):
    return {k: v for k, v in inputs.items() if k not in ("labels", "label")}


def by_key(inputs, feed):
    return {key: feed[node] for key, node in inputs.items() if node in feed}


def assert_predictions_match(sess, inputs, outputs, predictor, feed):
    expected = sess.run(outputs, {inputs[k]: v for k, v in feed.items()})
    got = predictor.predict(feed)
    assert sorted(got) == sorted(outputs)
    for key in outputs:
        assert got[key].shape == expected[key].shape
        assert np.max(np.abs(got[key] - expected[key]), initial=0) <= 1e-6, key


@pytest.mark.parametrize("build,feeds", [(mlp, mlp_feeds), (cnn, mlp_feeds)],
                         ids=["mlp", "cnn"])
def test_predictions_equal_the_training_graphs(tmp_path, build, feeds):
    _, sess, inputs, outputs = trained(build, feeds)
    served = serving_inputs(inputs)
    path = tf.saved_model.simple_save(sess, str(tmp_path / "model"), served, outputs)
    predictor = Predictor.load(path)
    assert predictor.signature.method_name == "tensorflow/serving/predict"
    assert predictor.signature.inputs["images"].shape == (None, 64)
    assert predictor.signature.inputs["images"].dtype == np.float32
    feed = by_key(served, feeds(inputs))
    assert_predictions_match(sess, served, outputs, predictor, feed)


def test_the_export_holds_only_the_inference_subgraph(tmp_path):
    graph, sess, inputs, outputs = trained(mlp, mlp_feeds)
    path = tf.saved_model.simple_save(sess, str(tmp_path / "m"), serving_inputs(inputs),
                                      outputs)
    manifest = json.loads((tmp_path / "m" / "saved_model.json").read_text())
    nodes = manifest["meta_graphs"][0]["nodes"]
    ops = {n["op"].rsplit(".", 1)[1] for n in nodes}
    assert not any("Grad" in op or "Apply" in op or "Entropy" in op for op in ops), ops
    assert "labels" not in {n["name"] for n in nodes}
    assert len(nodes) < len(graph.nodes) / 3
    saved = np.load(os.path.join(path, "variables.npz"), allow_pickle=False)
    assert sorted(saved.files) == ["hidden1/b", "hidden1/w", "logits/b", "logits/w"]
    np.testing.assert_array_equal(saved["hidden1/w"],
                                  sess.run(graph.get_node_by_name("hidden1/w")))


def test_ctr_with_a_dynamic_table_and_unknown_keys_reading_zeros(tmp_path):
    graph, sess, inputs, outputs = trained(ctr, ctr_feeds, steps=4)
    served = serving_inputs(inputs)
    path = tf.saved_model.simple_save(sess, str(tmp_path / "ctr"), served, outputs)
    table = np.load(os.path.join(path, "tables", "features.npz"), allow_pickle=False)
    assert set(table["keys"]) <= set(range(1, 20)) and len(table["keys"]) > 5
    assert np.all(np.diff(table["keys"]) > 0)
    predictor = Predictor.load(path)
    # Known keys, and keys training never saw, which read as zeros in both.
    feed = by_key(served, ctr_feeds(inputs, keys=list(range(1, 20)) + [1000, 1001, 10**12]))
    feed["user"] = np.array([1000, 3, 10**12, 5, 7, 1001, 2, 4])
    assert_predictions_match(sess, served, outputs, predictor, feed)
    rows = predictor.predict(feed)["user_embedding"]
    assert not rows[0].any() and not rows[2].any() and rows[1].any()


def test_tf1_round_trip_by_tensor_names(tmp_path):
    _, sess, inputs, outputs = trained(mlp, mlp_feeds)
    tf.saved_model.simple_save(sess, str(tmp_path / "m"), {"x": inputs["images"]},
                               {"y": outputs["probs"]})
    x = RNG.random((5, 64)).astype(np.float32)
    expected = sess.run(outputs["probs"], {inputs["images"]: x})
    with tf.Graph().as_default() as graph, tf.Session(graph=graph) as new:
        meta = tf.saved_model.loader.load(new, [tag_constants.SERVING], str(tmp_path / "m"))
        signature = meta.signature_def[signature_constants.DEFAULT_SERVING_SIGNATURE_DEF_KEY]
        x_name, y_name = signature.inputs["x"].name, signature.outputs["y"].name
        np.testing.assert_allclose(new.run(y_name + ":0", {x_name + ":0": x}), expected,
                                   atol=1e-6)
        np.testing.assert_allclose(new.run(graph.get_node_by_name(y_name),
                                           {graph.get_node_by_name(x_name): x}), expected,
                                   atol=1e-6)
    with pytest.raises(NotFoundError, match="no meta graph tagged"):
        loader.load(tf.Session(graph=tf.Graph()), ["train"], str(tmp_path / "m"))


def test_builder_with_several_signatures(tmp_path):
    _, sess, inputs, outputs = trained(mlp, mlp_feeds)
    sig = tf.saved_model.signature_def_utils.predict_signature_def
    builder = tf.saved_model.builder.SavedModelBuilder(str(tmp_path / "m"))
    builder.add_meta_graph_and_variables(
        sess, [tag_constants.SERVING],
        signature_def_map={"serving_default": sig({"images": inputs["images"]},
                                                  {"probs": outputs["probs"]}),
                           "classify": sig({"images": inputs["images"]},
                                           {"classes": outputs["classes"]})})
    path = builder.save()
    predictor = Predictor.load(path, signature="classify")
    assert sorted(predictor.signatures) == ["classify", "serving_default"]
    x = RNG.random((3, 64))
    np.testing.assert_array_equal(predictor.predict({"images": x})["classes"],
                                  sess.run(outputs["classes"], {inputs["images"]: x}))
    with pytest.raises(NotFoundError, match="no signature 'nope'"):
        Predictor.load(path, signature="nope")
    with pytest.raises(NotFoundError):
        Predictor.load(str(tmp_path / "missing"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = tmp_path_factory.mktemp("exported")
    _, sess, inputs, outputs = trained(ctr, ctr_feeds, steps=2)
    path = tf.saved_model.simple_save(sess, str(base / "ctr"), serving_inputs(inputs), outputs)
    return path


def copy_of(path, tmp_path):
    import shutil
    return shutil.copytree(path, tmp_path / "copy")


@pytest.mark.parametrize("file,damage", [
    ("variables.npz", "truncate"), ("constants.npz", "flip"), ("tables/features.npz", "flip"),
    ("tables/features.npz", "delete"), ("saved_model.json", "garble")])
def test_a_damaged_export_is_refused_naming_the_file(exported, tmp_path, file, damage):
    copy = copy_of(exported, tmp_path)
    target = copy / file
    data = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[:len(data) // 2])
    elif damage == "flip":
        middle = len(data) // 2
        target.write_bytes(data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1:])
    elif damage == "delete":
        target.unlink()
    else:
        target.write_bytes(data[:len(data) // 3])
    with pytest.raises(DataLossError, match=file.replace(".", r"\.")):
        Predictor.load(str(copy))


def test_an_unknown_op_class_is_refused_and_never_imported(exported, tmp_path):
    copy = copy_of(exported, tmp_path)
    manifest = json.loads((copy / "saved_model.json").read_text())
    manifest["meta_graphs"][0]["nodes"][-1]["op"] = "os.system"
    (copy / "saved_model.json").write_text(json.dumps(manifest))
    with pytest.raises(DataLossError, match=r"saved_model\.json: unknown op class 'os\.system'"):
        Predictor.load(str(copy))


def test_an_attribute_that_is_not_data_is_refused_at_export(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        x = tf.placeholder(tf.float32, (None, 2), name="x")
        y = tf.identity(x, name="y")
        y.callback = print  # not data: a servable cannot hold it
        sess = tf.Session(graph=graph)
    with pytest.raises(InvalidArgumentError, match="'y'.*'callback'"):
        tf.saved_model.simple_save(sess, str(tmp_path / "m"), {"x": x}, {"y": y})
    assert not os.path.exists(tmp_path / "m")
    with graph.as_default():
        z = tf.placeholder(tf.float32, (None, 2), name="z")
        w = x + z
    with pytest.raises(InvalidArgumentError, match="placeholder 'z'"):
        tf.saved_model.simple_save(sess, str(tmp_path / "m"), {"x": x}, {"w": w})


def test_bad_inputs_are_named(exported):
    predictor = Predictor.load(exported)
    good = {"multi_indices": np.array([[0, 0]]), "multi_values": np.array([3]),
            "multi_shape": np.array([1, 1]), "user": np.array([3])}
    assert predictor.predict(good)["ctr"].shape == (1,)
    cases = [({k: v for k, v in good.items() if k != "user"}, "missing input 'user'"),
             ({**good, "extra": 1}, "unknown input 'extra'"),
             ({**good, "user": np.array([3.5])}, "input 'user' has dtype float64"),
             ({**good, "user": np.array([[3]])}, "input 'user' has shape"),
             ({**good, "user": np.array(["a"])}, "input 'user' has dtype")]
    for inputs, message in cases:
        with pytest.raises(InvalidArgumentError, match=message):
            predictor.predict(inputs)


def test_predict_from_many_threads(exported):
    predictor = Predictor.load(exported)
    feeds = [{"multi_indices": np.array([[r, 0] for r in range(n)]),
              "multi_values": np.arange(n) + 1, "multi_shape": np.array([n, 1]),
              "user": np.arange(n) + 2} for n in range(1, 9)]
    expected = [predictor.predict(f)["ctr"] for f in feeds]
    errors = []

    def work():
        for _ in range(50):
            for feed, want in zip(feeds, expected, strict=True):
                if not np.array_equal(predictor.predict(feed)["ctr"], want):
                    errors.append("mismatch")
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_numbered_versions_appear_whole(tmp_path):
    _, sess, inputs, outputs = trained(mlp, mlp_feeds, steps=1)
    base = tmp_path / "base"
    first = tf.saved_model.export_version(str(base), sess, serving_inputs(inputs), outputs)
    second = tf.saved_model.export_version(str(base), sess, serving_inputs(inputs), outputs)
    assert (first, second) == (str(base / "1"), str(base / "2"))
    assert sorted(os.listdir(base)) == ["1", "2"]  # no temporary folder left
    assert Predictor.load(second).version == 2


def test_monitored_training_session_exports_every_n_checkpoints_and_at_the_end(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        inputs, outputs, loss = mlp()
        step = tf.train.get_or_create_global_step()
        train = tf.train.GradientDescentOptimizer(0.1).minimize(loss, global_step=step)
        with tf.train.MonitoredTrainingSession(
                checkpoint_dir=str(tmp_path / "ckpt"), save_checkpoint_steps=2,
                export_dir=str(tmp_path / "export"), export_every_n_checkpoints=2,
                export_signature=(serving_inputs(inputs), outputs),
                hooks=[tf.train.StopAtStepHook(last_step=11)]) as mon:
            while not mon.should_stop():
                mon.run(train, mlp_feeds(inputs))
            x = RNG.random((4, 64))
            expected = mon.run(outputs["probs"], {inputs["images"]: x})
    versions = sorted(os.listdir(tmp_path / "export"), key=int)
    # Checkpoints every 2 steps from the first (3, 5, 7, 9, 11): versions from the second and
    # the fourth, and one from the last at the end.
    assert versions == ["1", "2", "3"]
    got = Predictor.load(str(tmp_path / "export" / "3")).predict({"images": x})["probs"]
    assert np.max(np.abs(got - expected)) <= 1e-6


@pytest.mark.cluster
def test_a_cluster_chief_exports_what_a_local_session_computes(tmp_path):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(root, "tests", "cluster_scripts", "export_ctr.py")
    result = subprocess.run([sys.executable, "-m", "psflow.launcher", "--no-progress",
                             "--workers", "2", "--ps", "2", script, str(tmp_path)],
                            capture_output=True, text=True, timeout=240, cwd=root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    versions = sorted(os.listdir(tmp_path / "export"), key=int)
    assert versions and all(v.isdigit() for v in versions)
    predictor = Predictor.load(str(tmp_path / "export" / versions[-1]))
    # The same graph in a local session, given the final checkpoint's values and tables.
    sys.path.insert(0, os.path.dirname(script))
    try:
        import export_ctr
    finally:
        sys.path.pop(0)
    graph = tf.Graph()
    with graph.as_default():
        ids, _, ctr_node, _ = export_ctr.model()
        sess = tf.Session(graph=graph)
        sess.run(tf.global_variables_initializer())
        tf.train.Saver().restore(sess, str(tmp_path / "ckpt"))
    batch = np.concatenate([RNG.integers(0, 50, (6, 3)), [[1000, 2000, 3000]]])
    expected = sess.run(ctr_node, {ids: batch})
    got = predictor.predict({"ids": batch})["ctr"]
    assert np.max(np.abs(got - expected)) <= 1e-6
    table = np.load(tmp_path / "export" / versions[-1] / "tables" / "features.npz")
    assert 30 <= len(table["keys"]) <= 50  # rows from both shards
    simple = Predictor.load(str(tmp_path / "simple"))
    assert simple.predict({"ids": batch})["ctr"].shape == (7,)
