"""Mistakes in building or running a graph raise the documented exception type with a message
that names what went wrong."""

import re

import numpy as np
import pytest

import psflow as tf
from psflow.errors import (
    FailedPreconditionError,
    GraphMismatchError,
    InvalidArgumentError,
    NoGradientError,
)
from psflow.shapes import format_shape


@pytest.fixture(autouse=True)
def fresh_graph():
    with tf.Graph().as_default() as graph:
        yield graph


def raises(exc_type, *fragments):
    """pytest.raises(exc_type) whose message must contain every fragment (literally)."""
    pattern = "".join(f"(?=.*{re.escape(f)})" for f in fragments)
    return pytest.raises(exc_type, match=re.compile(pattern, re.DOTALL))


# -- feeds --------------------------------------------------------------------------------------

def test_missing_feed_names_the_placeholder_its_dtype_and_shape():
    images = tf.placeholder(tf.float32, shape=(None, 3), name="images")
    labels = tf.placeholder(tf.int32, shape=(None,), name="labels")
    total = tf.reduce_sum(images) + tf.cast(tf.reduce_sum(labels), tf.float32)
    with tf.Session() as sess:
        with raises(InvalidArgumentError, "placeholder 'labels'", "int32", "(?,)"):
            sess.run(total, {images: np.ones((2, 3))})
        with raises(InvalidArgumentError, "placeholder 'images'", "float32", "(?, 3)"):
            sess.run(total, {labels: [1, 2]})


@pytest.mark.parametrize("static_shape, fed_shape", [
    pytest.param((2, 3), (3, 3), id="wrong-dimension"),
    pytest.param((2, 3), (6,), id="wrong-rank"),
    pytest.param((None, 3), (4, 2), id="partially-known"),
    pytest.param((), (1,), id="scalar"),
])
def test_feed_of_the_wrong_shape_names_the_placeholder_and_both_shapes(static_shape,
                                                                       fed_shape):
    x = tf.placeholder(tf.float32, shape=static_shape, name="images")
    y = x * 2.0
    static_text = format_shape(static_shape)
    fed_text = format_shape(fed_shape)
    with tf.Session() as sess:
        with raises(InvalidArgumentError, "'images'", static_text, fed_text):
            sess.run(y, {x: np.zeros(fed_shape)})
        with raises(InvalidArgumentError, "'images'", static_text, fed_text):
            sess.run(y, {"images:0": np.zeros(fed_shape)})


@pytest.mark.parametrize("placeholder_dtype, value", [
    pytest.param(tf.int32, np.array([1.5, 2.0]), id="float-to-int"),
    pytest.param(tf.int64, [0.5, 1.0], id="python-floats-to-int"),
    pytest.param(tf.float32, np.array(["1.0", "2.0"]), id="strings-to-float"),
    pytest.param(tf.bool_, np.array([0.0, 1.0]), id="float-to-bool"),
    pytest.param(tf.int32, np.array([1 + 2j, 3j]), id="complex-to-int"),
])
def test_feed_of_an_incompatible_dtype_names_the_placeholder_and_both_dtypes(
        placeholder_dtype, value):
    x = tf.placeholder(placeholder_dtype, shape=(2,), name="ids")
    fed_dtype = np.asarray(value).dtype.name
    with tf.Session() as sess:
        with raises(InvalidArgumentError, "'ids'", fed_dtype, placeholder_dtype.name):
            sess.run(tf.identity(x), {x: value})


@pytest.mark.parametrize("placeholder_dtype, value", [
    pytest.param(tf.float32, np.array([1.5, 2.25]), id="float64-to-float32"),
    pytest.param(tf.float32, [1, 2], id="ints-to-float"),
    pytest.param(tf.float64, np.array([True, False]), id="bools-to-float"),
    pytest.param(tf.int32, np.array([7, 8], dtype=np.int64), id="int64-to-int32"),
    pytest.param(tf.int64, np.array([True, False]), id="bools-to-int"),
])
def test_feeds_that_can_be_cast_safely_are_converted_to_the_placeholder_dtype(
        placeholder_dtype, value):
    x = tf.placeholder(placeholder_dtype, shape=(2,), name="x")
    with tf.Session() as sess:
        result = sess.run(tf.identity(x), {x: value})
    assert result.dtype == placeholder_dtype
    np.testing.assert_array_equal(result, np.asarray(value).astype(placeholder_dtype))


# -- gradients ----------------------------------------------------------------------------------

def test_gradient_through_argmax_names_the_op():
    x = tf.placeholder(tf.float32, shape=(2, 3))
    predicted = tf.argmax(x, axis=1, name="predicted_class")
    with raises(NoGradientError, "'predicted_class'", "Argmax"):
        tf.gradients(predicted, [x])


def test_gradient_through_a_float_valued_argmax_names_the_op():
    x = tf.placeholder(tf.float32, shape=(2, 3))
    predicted = tf.argmax(x, axis=1, output_type=tf.float32, name="predicted_class")
    with raises(NoGradientError, "'predicted_class'", "Argmax"):
        tf.gradients(tf.reduce_sum(predicted * 2.0), [x])


def test_gradient_through_equal_names_the_op():
    x = tf.placeholder(tf.float32, shape=(3,))
    matches = tf.equal(x, 1.0, name="is_one")
    with raises(NoGradientError, "'is_one'", "Equal"):
        tf.gradients(matches, [x])


def test_gradients_takes_nodes_only():
    x = tf.placeholder(tf.float32, shape=(3,))
    with raises(TypeError, "gradients() takes graph nodes", "[1.0, 2.0]"):
        tf.gradients(tf.reduce_sum(x), [[1.0, 2.0]])


# -- graphs -------------------------------------------------------------------------------------

def make_in_other_graph(name):
    other = tf.Graph()
    with other.as_default():
        return tf.placeholder(tf.float32, shape=(2, 3), name=name)


def test_combining_nodes_of_two_graphs_names_both():
    mine = tf.placeholder(tf.float32, shape=(2, 3), name="mine")
    theirs = make_in_other_graph("theirs")
    with raises(GraphMismatchError, "'mine'", "'theirs'", "different graphs", "Add"):
        mine + theirs
    with raises(GraphMismatchError, "'mine'", "'theirs'", "different graphs", "MatMul"):
        tf.matmul(mine, theirs, transpose_b=True)
    with raises(GraphMismatchError, "'mine'", "'theirs'", "different graphs", "Concat"):
        tf.concat([mine, theirs], 0)


def test_gradients_across_two_graphs_names_both():
    mine = tf.placeholder(tf.float32, shape=(2, 3), name="mine")
    theirs = make_in_other_graph("theirs")
    loss = tf.reduce_sum(mine, name="loss")
    with raises(GraphMismatchError, "'theirs'", "'loss'", "different graphs"):
        tf.gradients(loss, [theirs])


def test_session_refuses_fetches_and_feeds_from_another_graph():
    mine = tf.placeholder(tf.float32, shape=(2, 3), name="mine")
    theirs = make_in_other_graph("theirs")
    with tf.Session() as sess:
        with raises(ValueError, "cannot fetch 'theirs'", "another graph"):
            sess.run(theirs, {theirs: np.zeros((2, 3))})
        with raises(ValueError, "'theirs'", "another graph"):
            sess.run(mine * 2.0, {mine: np.zeros((2, 3)), theirs: np.zeros((2, 3))})


# -- fetches ------------------------------------------------------------------------------------

@pytest.mark.parametrize("fetch", [
    pytest.param(5, id="int"),
    pytest.param(None, id="None"),
    pytest.param(np.ones(3), id="ndarray"),
    pytest.param([tf.constant, 1], id="function-in-a-list"),
])
def test_fetching_something_that_is_not_a_node(fetch):
    tf.constant(1.0, name="c")
    with tf.Session() as sess:
        with raises(TypeError, "cannot fetch", "must be graph nodes"):
            sess.run(fetch)


def test_fetching_an_unknown_name_names_it():
    tf.constant(1.0, name="c")
    with tf.Session() as sess:
        with raises(ValueError, "cannot fetch 'logits:0'", "no node of that name"):
            sess.run("logits:0")


def test_feed_key_that_is_not_a_node():
    x = tf.placeholder(tf.float32, shape=(2,))
    with tf.Session() as sess:
        with raises(TypeError, "cannot fetch 3", "must be graph nodes"):
            sess.run(x, {3: [1.0, 2.0]})


# -- variables ----------------------------------------------------------------------------------

def test_running_an_uninitialized_variable_names_it():
    weights = tf.Variable(np.ones((2, 2)), name="weights")
    output = tf.matmul(tf.constant(np.eye(2)), weights)
    with tf.Session() as sess:
        with raises(FailedPreconditionError, "uninitialized variable 'weights'",
                    "global_variables_initializer"):
            sess.run(weights)
        with raises(FailedPreconditionError, "uninitialized variable 'weights'"):
            sess.run(output)
        sess.run(weights.initializer)
        np.testing.assert_array_equal(sess.run(output), np.ones((2, 2)))


def test_assigning_a_value_of_the_wrong_shape_names_the_variable_and_both_shapes():
    weights = tf.Variable(np.zeros((2, 3)), name="weights")
    assign = weights.assign(np.zeros((3, 2)))
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        with raises(InvalidArgumentError, "'weights'", "(3, 2)", "(2, 3)"):
            sess.run(assign)


# -- shapes and values checked by ops -----------------------------------------------------------

@pytest.mark.parametrize("shape_a, shape_b, transpose_a, transpose_b", [
    pytest.param((2, 3), (4, 5), False, False, id="plain"),
    pytest.param((3, 2), (4, 5), True, False, id="transpose_a"),
    pytest.param((2, 3), (5, 4), False, True, id="transpose_b"),
    pytest.param((None, 3), (4, None), False, False, id="partially-known"),
])
def test_matmul_shape_mismatch_at_build_time_names_both_shapes(shape_a, shape_b, transpose_a,
                                                               transpose_b):
    a = tf.placeholder(tf.float32, shape=shape_a)
    b = tf.placeholder(tf.float32, shape=shape_b)
    with raises(ValueError, "matmul", format_shape(shape_a), format_shape(shape_b)):
        tf.matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b)


def test_matmul_of_a_vector_names_its_shape():
    with raises(ValueError, "matmul", "rank >= 2", "(3,)"):
        tf.matmul(tf.constant([1.0, 2.0, 3.0]), tf.constant(np.ones((3, 2))))


def test_matmul_shape_mismatch_at_run_time_names_the_op():
    a = tf.placeholder(tf.float32, shape=(None, None))
    b = tf.placeholder(tf.float32, shape=(None, None))
    product = tf.matmul(a, b, name="logits")
    with tf.Session() as sess:
        with raises(InvalidArgumentError, "MatMul op 'logits' failed"):
            sess.run(product, {a: np.ones((2, 3)), b: np.ones((4, 5))})


def test_elementwise_shape_mismatch_at_build_time_names_both_shapes():
    a = tf.placeholder(tf.float32, shape=(2, 3))
    b = tf.placeholder(tf.float32, shape=(4,))
    with raises(ValueError, "(2, 3)", "(4,)", "cannot be broadcast"):
        a + b


def test_impossible_reshape_names_the_shapes():
    x = tf.placeholder(tf.float32, shape=(2, 3))
    with raises(ValueError, "(2, 3)", "6 elements", "(4,)"):
        tf.reshape(x, (4,))


def test_sparse_cross_entropy_label_out_of_range_names_the_label_and_range():
    logits = tf.constant(np.zeros((2, 3)))
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=[0, 7], logits=logits)
    with tf.Session() as sess:
        with raises(InvalidArgumentError, "label 7", "[0, 3)"):
            sess.run(loss)


def test_python_float_that_an_integer_tensor_cannot_hold_is_refused():
    counts = tf.placeholder(tf.int32, shape=(2,), name="counts")
    with raises(TypeError, "0.5", "int32"):
        counts * 0.5
    with raises(TypeError, "2.5", "int32"):
        2.5 + counts
    doubled = counts * 2.0  # an integral float is exact in int32
    with tf.Session() as sess:
        np.testing.assert_array_equal(sess.run(doubled, {counts: [3, 4]}), [6, 8])
