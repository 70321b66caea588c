"""TF1 idioms that must not go silently wrong: the classic global steps, TF's dtype names, a
plain Session in a cluster's worker."""

import logging

import numpy as np
import pytest

import psflow as tf
from psflow import session as session_module


@pytest.fixture(autouse=True)
def fresh_graph():
    with tf.Graph().as_default() as graph:
        yield graph


def linear_train(global_step):
    x = tf.placeholder("float", shape=(None, 2))
    w = tf.Variable(np.zeros(2, np.float32))
    loss = tf.reduce_mean(tf.square(tf.reduce_sum(x * w, axis=1) - 1.0))
    return x, tf.train.GradientDescentOptimizer(0.1).minimize(loss, global_step=global_step)


@pytest.mark.parametrize("make", [
    lambda: tf.Variable(0, name="global_step", trainable=False),
    lambda: tf.get_variable("global_step", shape=(), dtype=tf.int64,
                            initializer=tf.zeros_initializer(), trainable=False),
    lambda: tf.Variable(0, name="step_counter", trainable=False),
], ids=["Variable", "get_variable", "any-name-passed-to-minimize"])
def test_a_global_step_made_the_classic_ways_is_the_global_step(fresh_graph, make):
    step = make()
    x, train = linear_train(step)
    assert tf.train.get_global_step() is step
    assert tf.train.get_or_create_global_step() is step
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        for _ in range(3):
            sess.run(train, {x: np.ones((4, 2), np.float32)})
        assert tf.train.global_step(sess, step) == 3


def test_a_variable_named_global_step_is_found_without_being_passed():
    step = tf.Variable(0, name="global_step", trainable=False)
    assert tf.train.get_global_step() is step


def test_a_global_step_that_is_not_a_numeric_scalar_is_refused_by_name():
    step = tf.Variable(np.zeros(2, np.float32), name="counter", trainable=False)
    with pytest.raises(TypeError, match="a numeric scalar variable; 'counter' is float32"):
        linear_train(step)


def test_tf_dtype_names_mean_what_they_mean_in_tf():
    assert tf.placeholder("float").dtype == np.float32
    assert tf.placeholder("double").dtype == np.float64
    assert tf.cast(tf.constant([1, 2]), "float").dtype == np.float32
    assert tf.placeholder("half").dtype == np.float16


def test_a_plain_session_in_a_clusters_worker_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(session_module, "_warned_alone", False)
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"ps": ["h:1"], "worker": ["h:2"]}, '
                                    '"task": {"type": "worker", "index": 0}}')
    with caplog.at_level(logging.WARNING, logger="psflow.session"):
        tf.Session()
        tf.Session()
    warnings = [r.getMessage() for r in caplog.records if "trains in this process" in
                r.getMessage()]
    assert len(warnings) == 1 and "MonitoredTrainingSession" in warnings[0]


def test_contrib_global_step_and_refusals_by_name():
    step = tf.contrib.framework.get_or_create_global_step()
    assert tf.train.get_global_step() is step
    with pytest.raises(AttributeError, match="psflow does not implement tf.estimator; "
                                             "instead, build the graph"):
        _ = tf.estimator.Estimator
    with pytest.raises(AttributeError, match="does not implement tf.train.FIFOQueue; "
                                             "instead, feed batches through feed_dict"):
        _ = tf.train.FIFOQueue
    with pytest.raises(AttributeError, match="does not implement tf.contrib.layers"):
        _ = tf.contrib.layers
    with pytest.raises(AttributeError, match="does not implement tf.nn.fancy_op$"):
        _ = tf.nn.fancy_op
    assert not hasattr(tf, "__wrapped__")


def test_variable_scope_shares_variables_by_reuse():
    def layer(x):
        w = tf.get_variable("w", shape=(2, 3), initializer=tf.ones_initializer())
        return x @ w

    x = tf.placeholder(tf.float32, (None, 2))
    with tf.variable_scope("tower"):
        first = layer(x)
    with tf.variable_scope("tower", reuse=True):
        second = layer(x)
    with tf.variable_scope("shared", reuse=tf.AUTO_REUSE):
        a = tf.get_variable("v", shape=(1,))
    with tf.variable_scope("shared", reuse=tf.AUTO_REUSE):
        b = tf.get_variable("v", shape=(1,))
    with tf.variable_scope("late") as scope:
        c = tf.get_variable("v", shape=(1,))
        scope.reuse_variables()
        with tf.variable_scope("inner"):  # reuse is inherited
            assert tf.get_variable_scope().reuse is True
        assert tf.get_variable("v") is c
    assert a is b and [v.name for v in tf.trainable_variables()] == [
        "tower/w", "shared/v", "late/v"]
    with pytest.raises(ValueError, match="'tower/w' already exists.*reuse=True"):
        with tf.variable_scope("tower"):
            layer(x)
    with pytest.raises(ValueError, match="'tower/u' does not exist.*AUTO_REUSE"):
        with tf.variable_scope("tower", reuse=True):
            tf.get_variable("u", shape=(1,))
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        out = sess.run([first, second], {x: [[1.0, 2.0]]})
    np.testing.assert_array_equal(out[0], out[1])


def test_static_shapes_are_tensor_shapes():
    x = tf.placeholder(tf.float32, (None, 28, 28))
    assert x.get_shape().as_list() == [None, 28, 28]
    assert x.shape.as_list()[1:] == [28, 28] and x.shape.ndims == 3
    assert x.shape == (None, 28, 28) and not x.shape.is_fully_defined()
    assert tf.zeros((2, 3)).shape.num_elements() == 6
    assert x.op.name == x.name


def test_app_flags_and_run(tmp_path):
    import subprocess
    import sys
    script = tmp_path / "trainer.py"
    script.write_text(
        "import psflow as tf\n"
        "tf.app.flags.DEFINE_integer('train_steps', 10, 'steps')\n"
        "tf.app.flags.DEFINE_string('job_name', '', 'job')\n"
        "tf.app.flags.DEFINE_boolean('sync_replicas', False, 'sync')\n"
        "tf.app.flags.DEFINE_float('learning_rate', 0.1, 'lr')\n"
        "FLAGS = tf.app.flags.FLAGS\n"
        "def main(argv):\n"
        "    tf.logging.set_verbosity(tf.logging.INFO)\n"
        "    tf.logging.info('steps %d', FLAGS.train_steps)\n"
        "    print(FLAGS.train_steps, repr(FLAGS.job_name), FLAGS.sync_replicas,\n"
        "          FLAGS.learning_rate, argv[1:])\n"
        "if __name__ == '__main__':\n"
        "    tf.app.run()\n")

    def run(*args):
        result = subprocess.run([sys.executable, str(script), *args], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result

    given = run("--train_steps=5", "--job_name", "worker", "--sync_replicas",
                "--learning_rate", "0.5", "rest")
    assert given.stdout.split("\n")[0] == "5 'worker' True 0.5 ['rest']"
    assert "steps 5" in given.stderr
    assert run("--nosync_replicas").stdout.startswith("10 '' False 0.1 []")


def test_interactive_session_config_and_queue_runner_idioms():
    sess = tf.InteractiveSession(config=tf.ConfigProto(
        log_device_placement=True, allow_soft_placement=True,
        gpu_options=tf.GPUOptions(allow_growth=True)))
    try:
        w = tf.Variable(2.0)
        tf.global_variables_initializer().run()
        assert (w * 3.0).eval() == 6.0
        coord = tf.train.Coordinator()
        threads = tf.train.start_queue_runners(sess=sess, coord=coord)
        assert threads == [] and not coord.should_stop()
        coord.request_stop()
        coord.join(threads)
        assert coord.should_stop()
    finally:
        sess.close()
    assert tf.get_default_session() is None
    with pytest.raises(ValueError, match="'grpc://localhost:2222' is not the target of a "
                                         "tf.train.Server created in this process"):
        tf.Session("grpc://localhost:2222")
    with tf.Session(fresh_graph_of(w)) as old_form:  # psflow's positional graph still works
        assert old_form.graph is w.graph


def fresh_graph_of(node):
    return node.graph


@pytest.mark.parametrize("schedule,expected", [
    (lambda step: tf.train.exponential_decay(0.1, step, 2, 0.5, staircase=True),
     [0.1, 0.1, 0.05, 0.05, 0.025]),
    (lambda step: tf.train.exponential_decay(0.1, step, 2, 0.5),
     [0.1 * 0.5 ** (k / 2) for k in range(5)]),
    (lambda step: tf.train.piecewise_constant(step, [1, 3], [0.3, 0.2, 0.1]),
     [0.3, 0.3, 0.2, 0.2, 0.1]),
], ids=["staircase", "smooth", "piecewise"])
def test_learning_rate_schedules_drive_the_optimizer(schedule, expected):
    step = tf.train.get_or_create_global_step()
    learning_rate = schedule(step)
    w = tf.Variable(np.zeros(1, np.float64))
    train = tf.train.GradientDescentOptimizer(learning_rate).minimize(
        tf.reduce_sum(w), global_step=step)
    seen = []
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        for _ in range(5):
            seen.append(float(sess.run(learning_rate)))
            sess.run(train)
        np.testing.assert_allclose(seen, expected, rtol=1e-6)
        np.testing.assert_allclose(sess.run(w), [-sum(expected)], rtol=1e-6)


def test_layers_build_a_cnn_that_learns_digits():
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    labels = digits.target.astype(np.int64)
    x = tf.placeholder(tf.float32, (None, 8, 8, 1))
    y = tf.placeholder(tf.int64, (None,))
    training = tf.placeholder(tf.bool, ())
    h = tf.layers.conv2d(x, 8, 3, padding="same", activation=tf.nn.relu)
    h = tf.layers.max_pooling2d(h, 2, 2)
    h = tf.layers.flatten(h)
    assert h.shape.as_list() == [None, 4 * 4 * 8]
    h = tf.layers.dropout(tf.layers.dense(h, 64, activation=tf.nn.relu), rate=0.2,
                          training=training)
    logits = tf.layers.dense(h, 10, name="out")
    assert [v.name for v in tf.trainable_variables()] == [
        "conv2d/kernel", "conv2d/bias", "dense/kernel", "dense/bias", "out/kernel", "out/bias"]
    with tf.variable_scope("", reuse=True):
        assert tf.get_variable("out/kernel") is tf.trainable_variables()[4]
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y,
                                                                         logits=logits))
    train = tf.train.AdamOptimizer(0.01).minimize(loss)
    accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1), y), tf.float32))
    rng = np.random.default_rng(0)
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        for _ in range(150):
            batch = rng.integers(0, len(labels), 64)
            sess.run(train, {x: images[batch], y: labels[batch], training: True})
        eval_feed = {x: images, y: labels, training: False}
        assert sess.run(accuracy, eval_feed) > 0.9
        np.testing.assert_array_equal(sess.run(logits, eval_feed), sess.run(logits, eval_feed))
    with pytest.raises(AttributeError, match="does not implement tf.layers.Dense"):
        _ = tf.layers.Dense


def test_summary_ops_serialize_and_the_file_writer_writes_what_tensorboard_reads(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    x = tf.placeholder(tf.float32, (None, 2))
    with tf.name_scope("stats"):
        tf.summary.scalar("mean", tf.reduce_mean(x))
    tf.summary.histogram("values", x)
    tf.summary.image("pictures", tf.reshape(x, (-1, 1, 2, 1)), max_outputs=2)
    extra = tf.summary.scalar("extra", tf.constant(7.0), collections=["other"])
    merged = tf.summary.merge_all()
    assert tf.summary.merge_all("none") is None
    with tf.Session() as sess:
        summary, other = sess.run([merged, tf.summary.merge([extra])],
                                  {x: [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]})
    assert isinstance(summary, bytes)
    with tf.summary.FileWriter(str(tmp_path), graph=tf.get_default_graph()) as writer:
        writer.add_summary(summary, 3)
        writer.add_summary(other, 4)
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    assert sorted(tags["scalars"]) == ["extra", "stats/mean"]
    assert tags["histograms"] == ["values"]
    assert sorted(tags["images"]) == ["pictures/image/0", "pictures/image/1"]
    assert [(e.step, e.value) for e in events.Scalars("stats/mean")] == [(3, 0.5)]
    assert events.Histograms("values")[0].histogram_value.num == 6
    with pytest.raises(TypeError, match="takes the value of a summary op"):
        tf.summary.FileWriter(str(tmp_path)).add_summary(3.0)
    with pytest.raises(AttributeError, match="does not implement tf.summary.audio"):
        _ = tf.summary.audio


def test_saver_saves_restores_and_finds_the_latest_checkpoint(tmp_path):
    w = tf.Variable(np.ones(3, np.float32), name="w")
    step = tf.train.get_or_create_global_step()
    train = tf.train.AdamOptimizer(0.1).minimize(tf.reduce_sum(tf.square(w)),
                                                 global_step=step)
    saver = tf.train.Saver(max_to_keep=1)
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        sess.run(train)
        first = saver.save(sess, str(tmp_path / "model.ckpt"), global_step=step)
        trained = sess.run(w)
        sess.run(train)
        latest = saver.save(sess, str(tmp_path / "model.ckpt"), global_step=step)
    assert tf.train.latest_checkpoint(str(tmp_path)) == latest != first
    assert tf.train.latest_checkpoint(str(tmp_path / "nowhere")) is None
    with tf.Session() as sess:
        saver.restore(sess, str(tmp_path / "model.ckpt"))  # a TF-style prefix: the latest
        assert sess.run(step) == 2
        assert not np.allclose(sess.run(w), trained)
        sess.run(train)  # Adam's moments came back too
        assert sess.run(step) == 3
    with pytest.raises(tf.errors.NotFoundError, match="no checkpoint at"):
        saver.restore(tf.Session(), str(tmp_path / "empty" / "model.ckpt"))


def test_server_and_session_targets_say_what_is_wrong():
    cluster = tf.train.ClusterSpec({"ps": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"] * 2})
    with pytest.raises(ValueError, match="job_name 'chief' is not a job of the cluster"):
        tf.train.Server(cluster, job_name="chief", task_index=0)
    with pytest.raises(ValueError, match="task_index 2 is out of range for job 'worker'"):
        tf.train.Server(cluster, job_name="worker", task_index=2)
    with pytest.raises(ValueError, match="the cluster has no 'ps' job"):
        tf.train.Server({"worker": ["127.0.0.1:2"]}, job_name="worker")
    server = tf.train.Server(cluster, job_name="worker", task_index=1)
    assert server.target == "grpc://127.0.0.1:2"
    assert server.task.worker_index == 1 and not server.task.is_chief
    server.join()  # a worker serves nothing: join returns at once
    with pytest.raises(ValueError, match="is not the target of a tf.train.Server"):
        tf.train.MonitoredTrainingSession(master="grpc://elsewhere:1")


def test_supervisor_trains_locally_and_saves_in_its_logdir(tmp_path):
    x, train = linear_train(tf.Variable(0, name="global_step", trainable=False))
    init = tf.global_variables_initializer()
    sv = tf.train.Supervisor(logdir=str(tmp_path), init_op=init, save_model_secs=600,
                             summary_op=None)
    with sv.managed_session() as sess:
        step = 0
        while not sv.should_stop() and step < 5:
            _, step = sess.run([train, sv.global_step], {x: np.ones((4, 2))})
    assert sv.is_chief and step == 5
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-000000000005")
    sv2 = tf.train.Supervisor(logdir=str(tmp_path), summary_op=None)
    sess = sv2.prepare_or_wait_for_session("")
    assert sess.run(sv2.global_step) == 5  # resumed from the logdir
    sv2.request_stop()
    assert sv2.should_stop()
    sv2.stop()
    with pytest.raises(NotImplementedError, match="Supervisor.loop"):
        sv2.loop(1, print)


def test_sync_replicas_members_are_ops_that_do_nothing():
    x = tf.placeholder(tf.float32, (None, 2))
    w = tf.Variable(np.zeros(2, np.float32))
    opt = tf.train.SyncReplicasOptimizer(tf.train.GradientDescentOptimizer(0.1),
                                         replicas_to_aggregate=2, total_num_replicas=2)
    train = opt.minimize(tf.reduce_sum(x * w), global_step=tf.train.get_or_create_global_step())
    members = [opt.local_step_init_op, opt.chief_init_op, opt.ready_for_local_init_op,
               opt.get_init_tokens_op(), opt.sync_token_queue]
    runner = opt.get_chief_queue_runner()
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        assert sess.run(members) == [None] * 5
        assert runner.create_threads(sess) == [] and tf.train.start_queue_runners(sess) == []
        sess.run(train, {x: np.ones((1, 2))})
        np.testing.assert_allclose(sess.run(w), [-0.1, -0.1])


def test_classic_flags_come_from_tf_config_unless_given(monkeypatch):
    import json

    from psflow.app import _FlagValues
    cluster = {"chief": ["c:1"], "worker": ["w:1", "w:2"], "ps": ["p:1", "p:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster,
                                                "task": {"type": "worker", "index": 1}}))
    flags = _FlagValues()
    for name in ("ps_hosts", "worker_hosts", "job_name"):
        flags._define(name, "", None, str)
    flags._define("task_index", 0, None, int)
    flags._parse(["--job_name=given"])
    assert flags.ps_hosts == "p:1,p:2" and flags.worker_hosts == "c:1,w:1,w:2"
    assert flags.task_index == 2 and flags.job_name == "given"
