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


def test_a_float_global_step_is_refused_by_name():
    step = tf.Variable(0.0, name="counter", trainable=False)
    with pytest.raises(TypeError, match="'counter' is float32"):
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
        tf.estimator.Estimator
    with pytest.raises(AttributeError, match="does not implement tf.train.Supervisor; "
                                             "instead, use tf.train.MonitoredTrainingSession"):
        tf.train.Supervisor
    with pytest.raises(AttributeError, match="does not implement tf.contrib.layers"):
        tf.contrib.layers
    with pytest.raises(AttributeError, match="does not implement tf.nn.fancy_op$"):
        tf.nn.fancy_op
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
    with pytest.raises(NotImplementedError, match="tf.train.Server is not implemented.*launch"):
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
        tf.layers.Dense
