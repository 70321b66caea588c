"""Dropout, average pooling and batch normalization: what they compute and how they train."""

import numpy as np
import pytest

import psflow as tf


@pytest.fixture(autouse=True)
def fresh_graph():
    with tf.Graph().as_default() as graph:
        yield graph


def test_dropout_keeps_the_expectation_and_takes_keep_prob_or_rate():
    x = tf.ones((200, 100))
    keep = tf.placeholder(tf.float32)
    by_keep = tf.nn.dropout(x, keep_prob=keep)
    by_rate = tf.nn.dropout(x, rate=0.25, seed=3)
    with tf.Session() as sess:
        kept = sess.run(by_keep, {keep: 0.5})
        assert set(np.unique(kept).tolist()) == {0.0, 2.0}
        assert abs(kept.mean() - 1.0) < 0.05
        np.testing.assert_array_equal(sess.run(by_keep, {keep: 1.0}), np.ones((200, 100)))
        assert abs((sess.run(by_rate) == 0).mean() - 0.25) < 0.02
    with pytest.raises(ValueError, match="keep_prob or rate"):
        tf.nn.dropout(x)


def test_dropout_gradient_uses_the_same_mask():
    w = tf.Variable(np.ones((50, 4), np.float32))
    y = tf.nn.dropout(w, keep_prob=0.5, seed=1)
    grad = tf.gradients(tf.reduce_sum(y), [w])[0]
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        out, g = sess.run([y, grad])
    np.testing.assert_array_equal(g, out)  # d sum(mask * w) / dw = mask, and w = 1


def test_avg_pool_same_padding_averages_only_the_covered_cells():
    x = np.arange(9, dtype=np.float64).reshape(1, 3, 3, 1)
    with tf.Session() as sess:
        got = sess.run(tf.nn.avg_pool(tf.constant(x), [1, 2, 2, 1], [1, 2, 2, 1], "SAME"))
    # Windows [0 1 3 4], [2 5], [6 7], [8]: TF divides by the cells inside the input.
    np.testing.assert_allclose(got.reshape(2, 2), [[2.0, 3.5], [6.5, 8.0]])


def test_batch_normalization_updates_its_moving_moments_through_update_ops():
    x = tf.placeholder(tf.float64, (None, 2))
    training = tf.placeholder(tf.bool, ())
    y = tf.layers.batch_normalization(x, momentum=0.5, training=training)
    updates = tf.get_collection(tf.GraphKeys.UPDATE_OPS)
    assert len(updates) == 2
    with tf.control_dependencies(updates):
        out = tf.identity(y)
    mean = [v for v in tf.global_variables() if v.name.endswith("moving_mean")][0]
    variance = [v for v in tf.global_variables() if v.name.endswith("moving_variance")][0]
    assert [v.name for v in tf.trainable_variables()] == \
        ["batch_normalization/gamma", "batch_normalization/beta"]
    batch = np.array([[1.0, 10.0], [3.0, 30.0]])
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        normalized = sess.run(out, {x: batch, training: True})
        np.testing.assert_allclose(normalized, [[-1, -1], [1, 1]], atol=1e-2)
        np.testing.assert_allclose(sess.run(mean), [1.0, 10.0])  # 0.5 * 0 + 0.5 * mean
        np.testing.assert_allclose(sess.run(variance), [1.0, 50.5])  # 0.5 * 1 + 0.5 * var
        inference = sess.run(out, {x: batch, training: False})  # moving moments, no update
        np.testing.assert_allclose(inference[:, 0], (batch[:, 0] - 1.0) / np.sqrt(1.0 + 1e-3))
        np.testing.assert_allclose(sess.run(mean), [1.0, 10.0])
