"""The ops of each family beyond the core (math, comparison, reduction, array and shape, nn,
clip): values as numpy computes them, gradients checked by finite differences, and the static
shapes they know."""

import numpy as np
import pytest

import psflow as tf
from gradcheck import check_gradients, weighted_sum


@pytest.fixture(autouse=True)
def fresh_graph():
    with tf.Graph().as_default() as graph:
        yield graph


RNG = np.random.default_rng(11)
A = RNG.normal(size=(3, 4))
B = RNG.normal(size=(4,))
POS = RNG.uniform(0.5, 2.0, size=(3, 4))
IMAGES = RNG.normal(size=(2, 5, 5, 2))


@pytest.mark.parametrize("op,arrays", [
    (lambda a, b: tf.maximum(a, b), (A, B)),
    (lambda a, b: tf.minimum(a, b), (A, B)),
    (lambda a, b: tf.pow(a, b), (POS, B)),
    (lambda a: tf.abs(a), (A,)),
    (lambda a: tf.where(tf.greater(a, 0.0), a * 2.0, tf.square(a)), (A,)),
    (lambda a: tf.reduce_max(a, axis=1), (A,)),
    (lambda a: tf.reduce_min(a, reduction_indices=[0], keep_dims=True), (A,)),
    (lambda a: tf.reduce_prod(a, axis=1), (A,)),
    (lambda a: tf.reduce_prod(a), (np.array([[0.5, 0.0], [2.0, 3.0]]),)),
    (lambda a, b: tf.stack([a, a * 2.0], axis=1) * tf.reduce_sum(b), (A, B)),
    (lambda a: tf.unstack(a, axis=1)[2] * 3.0, (A,)),
    (lambda a: tf.squeeze(tf.expand_dims(a, 1), axis=[1]), (A,)),
    (lambda a: tf.tile(a, [2, 3]), (A,)),
    (lambda a: tf.nn.leaky_relu(a, alpha=0.1), (A,)),
    (lambda a: tf.nn.elu(a), (A,)),
    (lambda a: tf.clip_by_value(a, -0.5, 0.5), (A,)),
    (lambda a, b: tf.nn.xw_plus_b(a, tf.reshape(b, (4, 1)), tf.constant([0.5], tf.float64)),
     (A, B)),
    (lambda a: tf.add_n(list(tf.nn.moments(a, axes=[0]))), (A,)),
    (lambda a, b: tf.clip_by_global_norm([a, b], 1.0)[0][0], (A, B)),
    (lambda a: tf.slice(a, [1, 0], [-1, 3]), (A,)),
    (lambda a: tf.split(a, 2, axis=1)[1] * tf.split(a, [1, -1, 1], axis=1)[1][:, :2], (A,)),
    (lambda x: tf.nn.avg_pool(x, [1, 2, 2, 1], [1, 2, 2, 1], "SAME"), (IMAGES,)),
    (lambda x: tf.nn.avg_pool(x, 3, 2, "VALID"), (IMAGES,)),
], ids=["maximum", "minimum", "pow", "abs", "where", "reduce_max", "reduce_min_old_names",
        "reduce_prod", "reduce_prod_zero", "stack", "unstack", "squeeze_expand_dims", "tile",
        "leaky_relu", "elu", "clip_by_value", "xw_plus_b", "moments", "clip_by_global_norm",
        "slice", "split", "avg_pool_same", "avg_pool_valid"])
def test_gradients_match_finite_differences(op, arrays):
    check_gradients(lambda *xs: weighted_sum(op(*xs)), *arrays)


def test_values_match_numpy():
    a = tf.constant(A)
    with tf.Session() as sess:
        got = sess.run({
            "sign": tf.sign(a), "floor": tf.floor(a), "round": tf.round(a * 3),
            "less": tf.less(a, 0.0), "ge": tf.greater_equal(a, 0.0),
            "and": tf.logical_and(tf.less(a, 1.0), tf.greater(a, -1.0)),
            "not": tf.logical_not(tf.less(a, 0.0)), "where": tf.where(tf.less(a, 0.0)),
            "mean_var": tf.nn.moments(a, axes=[1]),
            "max": tf.reduce_max(a, reduction_indices=1, keep_dims=True),
        })
    np.testing.assert_array_equal(got["sign"], np.sign(A))
    np.testing.assert_array_equal(got["floor"], np.floor(A))
    np.testing.assert_array_equal(got["round"], np.round(A * 3))
    np.testing.assert_array_equal(got["less"], A < 0)
    np.testing.assert_array_equal(got["ge"], A >= 0)
    np.testing.assert_array_equal(got["and"], (A < 1) & (A > -1))
    np.testing.assert_array_equal(got["not"], ~(A < 0))
    np.testing.assert_array_equal(got["where"], np.argwhere(A < 0))
    np.testing.assert_allclose(got["mean_var"][0], A.mean(axis=1))
    np.testing.assert_allclose(got["mean_var"][1], A.var(axis=1))
    np.testing.assert_array_equal(got["max"], A.max(axis=1, keepdims=True))


def test_slice_and_split_keep_the_static_shape_they_know():
    x = tf.placeholder(tf.float32, (None, 6))
    assert tf.slice(x, [0, 2], [-1, 3]).get_shape().as_list() == [None, 3]
    assert [p.shape.as_list() for p in tf.split(x, [1, 2, -1], axis=1)] == \
        [[None, 1], [None, 2], [None, 3]]
    assert x[:, 1].shape.as_list() == [None]
    with pytest.raises(ValueError, match="does not divide into 4 equal parts"):
        tf.split(x, 4, axis=1)
    with pytest.raises(ValueError, match=r"sizes \[1, 2\] do not add up"):
        tf.split(x, [1, 2], axis=1)
