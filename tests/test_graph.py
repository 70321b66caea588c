"""What a graph keeps beside its nodes: control dependencies and TF1's collections."""

import pytest

import psflow as tf


@pytest.fixture(autouse=True)
def fresh_graph():
    with tf.Graph().as_default() as graph:
        yield graph


def test_control_dependencies_run_their_ops_first_and_none_clears_them():
    counter = tf.Variable(0.0)
    bump = counter.assign_add(1.0)
    with tf.control_dependencies([bump]):
        read = tf.identity(tf.constant(5.0))
        with tf.control_dependencies(None):
            free = tf.identity(tf.constant(6.0))
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        assert sess.run(read) == 5.0 and sess.run(free) == 6.0 and sess.run(read) == 5.0
        assert sess.run(counter) == 2.0
    with pytest.raises(TypeError, match="control_dependencies takes graph nodes"):
        with tf.control_dependencies(["not a node"]):
            pass


def test_collections_hold_what_scripts_put_there():
    v = tf.Variable(1.0, name="v", collections=[tf.GraphKeys.GLOBAL_VARIABLES, "mine"])
    loss = tf.constant(2.0, name="loss")
    tf.add_to_collection(tf.GraphKeys.LOSSES, loss)
    tf.add_to_collections(["a", "b"], loss)
    assert tf.get_collection("mine") == [v] and tf.get_collection(tf.GraphKeys.LOSSES) == [loss]
    assert tf.get_collection("b") == [loss] and tf.get_collection("none") == []
    assert tf.get_collection(tf.GraphKeys.GLOBAL_VARIABLES) == [v]
    assert tf.get_collection(tf.GraphKeys.TRAINABLE_VARIABLES, scope="w") == []
    step = tf.Variable(0, name="my_step", trainable=False,
                       collections=[tf.GraphKeys.GLOBAL_VARIABLES, tf.GraphKeys.GLOBAL_STEP])
    assert tf.train.get_global_step() is step
    assert tf.get_collection(tf.GraphKeys.GLOBAL_STEP) == [step]
