"""Forward values and float64 finite-difference gradient checks for every differentiable op."""

import numpy as np
import pytest

import psflow as tf
from gradcheck import check_gradients, weighted_sum


@pytest.fixture(autouse=True)
def fresh_graph():
    with tf.Graph().as_default() as graph:
        yield graph


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def run(fetches, feed_dict=None):
    with tf.Session() as sess:
        return sess.run(fetches, feed_dict)


def away_from_zero(rng, shape, low=0.2, high=2.0):
    """Values whose magnitude is in [low, high], with random signs."""
    return rng.uniform(low, high, shape) * rng.choice([-1.0, 1.0], shape)


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# -- elementwise unary ops ----------------------------------------------------------------------

def normal_input(rng):
    return rng.standard_normal((3, 4))


def positive_input(rng):
    return rng.uniform(0.5, 2.0, (3, 4))


def nonzero_input(rng):
    return away_from_zero(rng, (3, 4))


UNARY_OPS = [
    pytest.param(tf.negative, np.negative, normal_input, id="negative"),
    pytest.param(tf.exp, np.exp, normal_input, id="exp"),
    pytest.param(tf.log, np.log, positive_input, id="log"),
    pytest.param(tf.square, np.square, normal_input, id="square"),
    pytest.param(tf.sqrt, np.sqrt, positive_input, id="sqrt"),
    pytest.param(tf.sigmoid, np_sigmoid, normal_input, id="sigmoid"),
    pytest.param(tf.nn.sigmoid, np_sigmoid, normal_input, id="nn.sigmoid"),
    pytest.param(tf.tanh, np.tanh, normal_input, id="tanh"),
    pytest.param(tf.nn.relu, lambda x: np.maximum(x, 0.0), nonzero_input, id="relu"),
    pytest.param(tf.nn.softmax, np_softmax, normal_input, id="softmax"),
    pytest.param(tf.identity, lambda x: x, normal_input, id="identity"),
]


@pytest.mark.parametrize("op, reference, make_input", UNARY_OPS)
def test_unary_op_forward_matches_numpy(op, reference, make_input, rng):
    x_value = make_input(rng)
    x = tf.placeholder(tf.float64, shape=x_value.shape)
    y = op(x)
    assert y.shape == x_value.shape and y.dtype == tf.float64
    np.testing.assert_allclose(run(y, {x: x_value}), reference(x_value), rtol=1e-12)


@pytest.mark.parametrize("op, reference, make_input", UNARY_OPS)
def test_unary_op_gradient_matches_finite_differences(op, reference, make_input, rng):
    check_gradients(lambda x: weighted_sum(op(x)), make_input(rng))


# -- elementwise binary ops and broadcasting ----------------------------------------------------

BINARY_OPS = [
    pytest.param(tf.add, np.add, id="add"),
    pytest.param(tf.subtract, np.subtract, id="subtract"),
    pytest.param(tf.multiply, np.multiply, id="multiply"),
    pytest.param(tf.divide, np.divide, id="divide"),
]

BROADCAST_SHAPES = [
    pytest.param((3, 4), (3, 4), id="same-shape"),
    pytest.param((3, 4), (4,), id="matrix-row"),
    pytest.param((4,), (3, 4), id="row-matrix"),
    pytest.param((3, 1), (1, 4), id="column-row"),
    pytest.param((2, 3, 4), (3, 1), id="rank3-column"),
    pytest.param((2, 1, 4), (3, 1), id="both-broadcast"),
    pytest.param((), (3, 4), id="scalar-matrix"),
    pytest.param((3, 4), (), id="matrix-scalar"),
    pytest.param((1, 1), (2, 3), id="ones-matrix"),
]


def binary_inputs(rng, shape_a, shape_b):
    # The second operand is kept away from zero so that divide is well conditioned.
    return rng.standard_normal(shape_a), away_from_zero(rng, shape_b, 0.5, 1.5)


@pytest.mark.parametrize("shape_a, shape_b", BROADCAST_SHAPES)
@pytest.mark.parametrize("op, reference", BINARY_OPS)
def test_binary_op_forward_broadcasts_like_numpy(op, reference, shape_a, shape_b, rng):
    a_value, b_value = binary_inputs(rng, shape_a, shape_b)
    a = tf.placeholder(tf.float64, shape=shape_a)
    b = tf.placeholder(tf.float64, shape=shape_b)
    y = op(a, b)
    expected = reference(a_value, b_value)
    assert y.shape == expected.shape
    np.testing.assert_allclose(run(y, {a: a_value, b: b_value}), expected, rtol=1e-12)


@pytest.mark.parametrize("shape_a, shape_b", BROADCAST_SHAPES)
@pytest.mark.parametrize("op, reference", BINARY_OPS)
def test_binary_op_gradient_is_correct_and_has_each_operand_shape(op, reference, shape_a,
                                                                  shape_b, rng):
    a_value, b_value = binary_inputs(rng, shape_a, shape_b)
    out_shape = np.broadcast_shapes(shape_a, shape_b)
    check_gradients(lambda a, b: weighted_sum(op(a, b)), a_value, b_value)
    check_gradients(lambda a, b: weighted_sum(op(a, b), shape=out_shape), a_value, b_value,
                    static_shapes=[None, None])


PARTIAL_SHAPES = [
    pytest.param((3, 4), (4,), (None, 4), (4,), id="unknown-batch+row"),
    pytest.param((3, 1), (3, 4), (None, 1), (None, 4), id="unknown-batch-column"),
    pytest.param((3, 4), (3, 4), (None, 4), (None, 4), id="unknown-batch-same"),
    pytest.param((4,), (2, 4), (None,), (2, None), id="unknown-vector+matrix"),
    pytest.param((3, 4), (1, 4), (None, None), (1, None), id="unknown-everything"),
]


@pytest.mark.parametrize("shape_a, shape_b, static_a, static_b", PARTIAL_SHAPES)
@pytest.mark.parametrize("op, reference", BINARY_OPS)
def test_binary_op_gradient_with_partially_known_shapes(op, reference, shape_a, shape_b,
                                                        static_a, static_b, rng):
    a_value, b_value = binary_inputs(rng, shape_a, shape_b)
    out_shape = np.broadcast_shapes(shape_a, shape_b)
    check_gradients(lambda a, b: weighted_sum(op(a, b), shape=out_shape), a_value, b_value,
                    static_shapes=[static_a, static_b])


def test_add_n_gradient_reaches_every_input(rng):
    values = [rng.standard_normal((2, 3)) for _ in range(3)]
    check_gradients(lambda a, b, c: weighted_sum(tf.add_n([a, b, c])), *values)


# -- matmul -------------------------------------------------------------------------------------

MATMUL_CASES = [
    pytest.param((3, 4), (4, 5), False, False, id="plain"),
    pytest.param((4, 3), (4, 5), True, False, id="transpose_a"),
    pytest.param((3, 4), (5, 4), False, True, id="transpose_b"),
    pytest.param((4, 3), (5, 4), True, True, id="transpose_both"),
    pytest.param((2, 3, 4), (2, 4, 5), False, False, id="batched"),
    pytest.param((2, 4, 3), (2, 5, 4), True, True, id="batched-transpose_both"),
    pytest.param((2, 3, 4), (4, 5), False, False, id="batched-times-matrix"),
    pytest.param((3, 4), (2, 4, 5), False, False, id="matrix-times-batched"),
    pytest.param((2, 1, 3, 4), (3, 5, 4), False, True, id="broadcast-batch-axes"),
]


def np_matmul(a, b, transpose_a, transpose_b):
    return np.matmul(a.swapaxes(-1, -2) if transpose_a else a,
                     b.swapaxes(-1, -2) if transpose_b else b)


@pytest.mark.parametrize("shape_a, shape_b, transpose_a, transpose_b", MATMUL_CASES)
def test_matmul_forward_and_static_shape(shape_a, shape_b, transpose_a, transpose_b, rng):
    a_value, b_value = rng.standard_normal(shape_a), rng.standard_normal(shape_b)
    a = tf.placeholder(tf.float64, shape=shape_a)
    b = tf.placeholder(tf.float64, shape=shape_b)
    y = tf.matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b)
    expected = np_matmul(a_value, b_value, transpose_a, transpose_b)
    assert y.shape == expected.shape
    np.testing.assert_allclose(run(y, {a: a_value, b: b_value}), expected, rtol=1e-12)


@pytest.mark.parametrize("shape_a, shape_b, transpose_a, transpose_b", MATMUL_CASES)
def test_matmul_gradient(shape_a, shape_b, transpose_a, transpose_b, rng):
    out_shape = np_matmul(np.zeros(shape_a), np.zeros(shape_b), transpose_a, transpose_b).shape
    check_gradients(
        lambda a, b: weighted_sum(tf.matmul(a, b, transpose_a=transpose_a,
                                            transpose_b=transpose_b), shape=out_shape),
        rng.standard_normal(shape_a), rng.standard_normal(shape_b))


def test_matmul_gradient_with_unknown_batch_dimension(rng):
    check_gradients(lambda a, b: weighted_sum(tf.matmul(a, b), shape=(3, 5)),
                    rng.standard_normal((3, 4)), rng.standard_normal((4, 5)),
                    static_shapes=[(None, 4), (4, 5)])


# -- reductions ---------------------------------------------------------------------------------

REDUCTIONS = [
    pytest.param(tf.reduce_sum, np.sum, id="reduce_sum"),
    pytest.param(tf.reduce_mean, np.mean, id="reduce_mean"),
]
AXES = [None, 0, 1, -1, (0, 2), (2, 0), (0, 1, 2)]


@pytest.mark.parametrize("keepdims", [False, True], ids=["dropdims", "keepdims"])
@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("reduce, reference", REDUCTIONS)
def test_reduction_forward_and_gradient(reduce, reference, axis, keepdims, rng):
    x_value = rng.standard_normal((2, 3, 4))
    np_axis = tuple(axis) if isinstance(axis, tuple) else axis
    expected = reference(x_value, axis=np_axis, keepdims=keepdims)
    x = tf.placeholder(tf.float64, shape=x_value.shape)
    y = reduce(x, axis=axis, keepdims=keepdims)
    assert y.shape == expected.shape
    np.testing.assert_allclose(run(y, {x: x_value}), expected, rtol=1e-12)

    if expected.ndim == 0:
        check_gradients(lambda x: reduce(x, axis=axis, keepdims=keepdims) * 1.7, x_value)
    else:
        check_gradients(lambda x: weighted_sum(reduce(x, axis=axis, keepdims=keepdims)),
                        x_value)


@pytest.mark.parametrize("reduce", [tf.reduce_sum, tf.reduce_mean])
def test_reduction_gradient_with_unknown_batch_dimension(reduce, rng):
    check_gradients(lambda x: weighted_sum(reduce(x, axis=1), shape=(5,)),
                    rng.standard_normal((5, 3)), static_shapes=[(None, 3)])


# -- shape ops ----------------------------------------------------------------------------------

@pytest.mark.parametrize("new_shape, static_shape", [
    pytest.param((6, 4), (2, 3, 4), id="merge-leading"),
    pytest.param((-1,), (2, 3, 4), id="flatten"),
    pytest.param((4, -1, 2), (2, 3, 4), id="inferred-middle"),
    pytest.param((-1, 12), (None, 3, 4), id="unknown-batch"),
])
def test_reshape_forward_and_gradient(new_shape, static_shape, rng):
    x_value = rng.standard_normal((2, 3, 4))
    expected = x_value.reshape(new_shape)
    x = tf.placeholder(tf.float64, shape=static_shape)
    np.testing.assert_array_equal(run(tf.reshape(x, new_shape), {x: x_value}), expected)
    check_gradients(lambda x: weighted_sum(tf.reshape(x, new_shape), shape=expected.shape),
                    x_value, static_shapes=[static_shape])


@pytest.mark.parametrize("perm", [None, (1, 0, 2), (2, 0, 1), (0, 2, 1)], ids=str)
def test_transpose_forward_and_gradient(perm, rng):
    x_value = rng.standard_normal((2, 3, 4))
    expected = np.transpose(x_value, perm)
    x = tf.placeholder(tf.float64, shape=x_value.shape)
    y = tf.transpose(x, perm)
    assert y.shape == expected.shape
    np.testing.assert_array_equal(run(y, {x: x_value}), expected)
    check_gradients(lambda x: weighted_sum(tf.transpose(x, perm)), x_value)


@pytest.mark.parametrize("axis, shapes", [
    pytest.param(0, [(2, 3), (4, 3), (1, 3)], id="axis0"),
    pytest.param(1, [(2, 3), (2, 1), (2, 2)], id="axis1"),
    pytest.param(-1, [(2, 2, 3), (2, 2, 1)], id="axis-1"),
])
def test_concat_forward_and_gradient(axis, shapes, rng):
    values = [rng.standard_normal(s) for s in shapes]
    expected = np.concatenate(values, axis=axis)
    inputs = [tf.placeholder(tf.float64, shape=s) for s in shapes]
    y = tf.concat(inputs, axis)
    assert y.shape == expected.shape
    np.testing.assert_array_equal(run(y, dict(zip(inputs, values, strict=True))), expected)
    check_gradients(lambda *xs: weighted_sum(tf.concat(list(xs), axis)), *values)


# -- gather (embedding lookup) ------------------------------------------------------------------

@pytest.mark.parametrize("indices", [
    pytest.param([4, 0, 2], id="distinct"),
    pytest.param([2, 0, 2, 2, 4], id="repeated"),
    pytest.param([[1, 1], [3, 0]], id="2d-indices"),
])
def test_gather_forward_and_densified_gradient(indices, rng):
    params_value = rng.standard_normal((5, 3))
    expected = params_value[np.asarray(indices)]
    params = tf.placeholder(tf.float64, shape=(5, 3))
    y = tf.gather(params, tf.constant(indices, dtype=tf.int32))
    assert y.shape == expected.shape
    np.testing.assert_array_equal(run(y, {params: params_value}), expected)
    check_gradients(lambda p: weighted_sum(tf.gather(p, indices)), params_value)


def test_gather_gradient_is_sparse_and_repeated_rows_add_up():
    embedding = tf.Variable(np.arange(12.0).reshape(4, 3))
    looked_up = tf.gather(embedding, [2, 0, 2])
    weights = np.array([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0], [100.0, 200.0, 300.0]])
    loss = tf.reduce_sum(looked_up * tf.constant(weights))
    (grad,) = tf.gradients(loss, [embedding])
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        slices = sess.run(grad)
    assert isinstance(slices, tf.IndexedSlices)
    assert slices.dense_shape == (4, 3)
    np.testing.assert_array_equal(slices.indices, [2, 0, 2])
    np.testing.assert_array_equal(slices.values, weights)
    expected = np.zeros((4, 3))
    expected[2] = weights[0] + weights[2]
    expected[0] = weights[1]
    np.testing.assert_array_equal(slices.to_dense(), expected)


def test_gather_gradients_from_two_lookups_stay_sparse_and_add_up():
    embedding = tf.Variable(np.zeros((4, 2)))
    loss = tf.reduce_sum(tf.gather(embedding, [1, 3])) + \
        tf.reduce_sum(tf.gather(embedding, [3]) * 2.0)
    (grad,) = tf.gradients(loss, [embedding])
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        slices = sess.run(grad)
    assert isinstance(slices, tf.IndexedSlices)
    np.testing.assert_array_equal(slices.to_dense(), [[0, 0], [1, 1], [0, 0], [3, 3]])


def test_gather_gradient_combined_with_a_dense_use_is_densified(rng):
    check_gradients(lambda p: weighted_sum(tf.gather(p, [1, 1, 3])) +
                    weighted_sum(tf.square(p), seed=7),
                    rng.standard_normal((4, 3)))


# -- conv2d and max_pool ------------------------------------------------------------------------

def same_padding(size, kernel, stride):
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


def np_windows(x, kh, kw, strides, padding, fill):
    """Yields (i, j, window) for every output position of an NHWC sliding window."""
    sh, sw = strides
    n, h, w, c = x.shape
    if padding == "SAME":
        oh, top, bottom = same_padding(h, kh, sh)
        ow, left, right = same_padding(w, kw, sw)
        x = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=fill)
    else:
        oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    for i in range(oh):
        for j in range(ow):
            yield i, j, x[:, i * sh:i * sh + kh, j * sw:j * sw + kw, :]


def np_conv2d(x, f, strides, padding):
    kh, kw, _, out_channels = f.shape
    windows = list(np_windows(x, kh, kw, strides, padding, 0.0))
    oh, ow = windows[-1][0] + 1, windows[-1][1] + 1
    out = np.zeros((x.shape[0], oh, ow, out_channels))
    for i, j, window in windows:
        out[:, i, j, :] = np.einsum("nhwc,hwco->no", window, f)
    return out


def np_max_pool(x, ksize, strides, padding):
    windows = list(np_windows(x, ksize[0], ksize[1], strides, padding, -np.inf))
    oh, ow = windows[-1][0] + 1, windows[-1][1] + 1
    out = np.zeros((x.shape[0], oh, ow, x.shape[3]))
    for i, j, window in windows:
        out[:, i, j, :] = window.max(axis=(1, 2))
    return out


STRIDES = [
    pytest.param(1, (1, 1), id="stride1"),
    pytest.param(2, (2, 2), id="stride2"),
    pytest.param([1, 2, 1, 1], (2, 1), id="stride-nhwc-2x1"),
]


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("strides, stride_pair", STRIDES)
@pytest.mark.parametrize("kernel", [(3, 3), (2, 2)], ids=["k3x3", "k2x2"])
def test_conv2d_forward_and_gradient(kernel, strides, stride_pair, padding, rng):
    x_value = rng.standard_normal((2, 5, 5, 2))
    f_value = rng.standard_normal(kernel + (2, 3))
    expected = np_conv2d(x_value, f_value, stride_pair, padding)
    x = tf.placeholder(tf.float64, shape=x_value.shape)
    f = tf.placeholder(tf.float64, shape=f_value.shape)
    y = tf.nn.conv2d(x, f, strides=strides, padding=padding)
    assert y.shape == expected.shape
    np.testing.assert_allclose(run(y, {x: x_value, f: f_value}), expected, rtol=1e-10)
    check_gradients(lambda x, f: weighted_sum(tf.nn.conv2d(x, f, strides, padding)),
                    x_value, f_value)


def distinct_values(rng, shape, spacing=0.1):
    """Values spaced `spacing` apart in random order: no ties anywhere."""
    size = int(np.prod(shape))
    return (rng.permutation(size) * spacing - size * spacing / 2).reshape(shape)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("strides, stride_pair", STRIDES)
@pytest.mark.parametrize("ksize", [(2, 2), (3, 3), (2, 3)], ids=["k2x2", "k3x3", "k2x3"])
def test_max_pool_forward_and_gradient(ksize, strides, stride_pair, padding, rng):
    x_value = distinct_values(rng, (2, 5, 5, 2))
    expected = np_max_pool(x_value, ksize, stride_pair, padding)
    x = tf.placeholder(tf.float64, shape=x_value.shape)
    y = tf.nn.max_pool(x, ksize=[1, *ksize, 1], strides=strides, padding=padding)
    assert y.shape == expected.shape
    np.testing.assert_array_equal(run(y, {x: x_value}), expected)
    check_gradients(lambda x: weighted_sum(tf.nn.max_pool(x, ksize, strides, padding)),
                    x_value)


# -- cross-entropy losses -----------------------------------------------------------------------

def test_softmax_cross_entropy_forward_and_gradients(rng):
    logits_value = rng.standard_normal((4, 5))
    labels_value = np_softmax(rng.standard_normal((4, 5)))
    labels = tf.placeholder(tf.float64, shape=(4, 5))
    logits = tf.placeholder(tf.float64, shape=(4, 5))
    loss = tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    expected = -np.sum(labels_value * np.log(np_softmax(logits_value)), axis=-1)
    assert loss.shape == (4,)
    np.testing.assert_allclose(run(loss, {labels: labels_value, logits: logits_value}),
                               expected, rtol=1e-12)
    check_gradients(lambda labels, logits: weighted_sum(
        tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)),
        labels_value, logits_value)


@pytest.mark.parametrize("labels_value, logits_shape", [
    pytest.param(np.array([0, 3, 1, 4]), (4, 5), id="batch"),
    pytest.param(np.array([[0, 2, 2], [1, 4, 0]]), (2, 3, 5), id="batch-of-sequences"),
])
def test_sparse_softmax_cross_entropy_forward_and_gradient(labels_value, logits_shape, rng):
    logits_value = rng.standard_normal(logits_shape)
    logits = tf.placeholder(tf.float64, shape=logits_shape)
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.constant(labels_value, dtype=tf.int32), logits=logits)
    log_probs = np.log(np_softmax(logits_value))
    expected = -np.take_along_axis(log_probs, labels_value[..., None], axis=-1)[..., 0]
    assert loss.shape == labels_value.shape
    np.testing.assert_allclose(run(loss, {logits: logits_value}), expected, rtol=1e-12)
    check_gradients(lambda logits: weighted_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels_value, logits=logits)), logits_value)


def test_sparse_and_dense_softmax_cross_entropy_agree(rng):
    logits = tf.constant(rng.standard_normal((4, 5)))
    labels = np.array([0, 3, 1, 4])
    sparse = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    dense = tf.nn.softmax_cross_entropy_with_logits(
        labels=tf.one_hot(labels, 5, dtype=tf.float64), logits=logits)
    sparse_grad = tf.gradients(tf.reduce_mean(sparse), logits)[0]
    dense_grad = tf.gradients(tf.reduce_mean(dense), logits)[0]
    values = run([sparse, dense, sparse_grad, dense_grad])
    np.testing.assert_allclose(values[0], values[1], rtol=1e-12)
    np.testing.assert_allclose(values[2], values[3], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64], ids=["float32", "float64"])
def test_cross_entropy_is_stable_for_huge_logits(dtype):
    logits_value = np.array([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 1000.0]])
    one_hot = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    logits = tf.placeholder(dtype, shape=(2, 3))
    dense = tf.nn.softmax_cross_entropy_with_logits(labels=tf.constant(one_hot, dtype=dtype),
                                                    logits=logits)
    sparse = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=[0, 1], logits=logits)
    grads = tf.gradients(tf.reduce_sum(dense), logits) + \
        tf.gradients(tf.reduce_sum(sparse), logits)
    results = run([dense, sparse] + grads, {logits: logits_value})
    for value in results:
        assert np.all(np.isfinite(value))
    expected_loss = [0.0, np.log(2.0)]
    expected_grad = [[0.0, 0.0, 0.0], [0.0, -0.5, 0.5]]
    np.testing.assert_allclose(results[0], expected_loss, atol=1e-6)
    np.testing.assert_allclose(results[1], expected_loss, atol=1e-6)
    np.testing.assert_allclose(results[2], expected_grad, atol=1e-6)
    np.testing.assert_allclose(results[3], expected_grad, atol=1e-6)


def test_softmax_and_sigmoid_are_finite_for_huge_inputs():
    x = tf.constant([[1000.0, -1000.0, 0.0]], dtype=tf.float64)
    softmax, sigmoid = tf.nn.softmax(x), tf.sigmoid(x)
    grads = tf.gradients(weighted_sum(softmax) + weighted_sum(sigmoid), x)
    softmax_value, sigmoid_value, grad_value = run([softmax, sigmoid, grads[0]])
    np.testing.assert_allclose(softmax_value, [[1.0, 0.0, 0.0]])
    np.testing.assert_allclose(sigmoid_value, [[1.0, 0.0, 0.5]])
    assert np.all(np.isfinite(grad_value))


# -- graph structure: several paths, shared nodes, several ys -----------------------------------

def test_gradients_along_several_paths_are_summed(rng):
    x_value = rng.standard_normal((3, 4))
    x = tf.placeholder(tf.float64, shape=(3, 4))
    (grad,) = tf.gradients(tf.reduce_sum(x + tf.sigmoid(tf.sigmoid(x))), [x])
    inner = np_sigmoid(x_value)
    outer = np_sigmoid(inner)
    expected = 1.0 + outer * (1 - outer) * inner * (1 - inner)
    np.testing.assert_allclose(run(grad, {x: x_value}), expected, rtol=1e-12)
    check_gradients(lambda x: tf.reduce_sum(x + tf.sigmoid(tf.sigmoid(x))), x_value)


def test_gradient_of_a_node_used_twice(rng):
    x_value = rng.standard_normal((3, 4))
    x = tf.placeholder(tf.float64, shape=(3, 4))
    (grad,) = tf.gradients(tf.reduce_sum(x * x), [x])
    np.testing.assert_allclose(run(grad, {x: x_value}), 2 * x_value, rtol=1e-12)
    check_gradients(lambda x: weighted_sum(x * x), x_value)


def test_gradient_through_a_shared_intermediate_node(rng):
    def loss_fn(x):
        y = tf.exp(x)
        return weighted_sum(y * y + tf.tanh(y))
    check_gradients(loss_fn, rng.standard_normal((2, 3)) * 0.5)


def test_gradients_of_several_ys_are_summed_and_unconnected_xs_get_none(rng):
    x_value = rng.standard_normal(4)
    x = tf.placeholder(tf.float64, shape=(4,))
    unrelated = tf.placeholder(tf.float64, shape=(4,))
    grads = tf.gradients([tf.reduce_sum(tf.square(x)), tf.reduce_sum(3.0 * x)], [x, unrelated])
    assert grads[1] is None
    np.testing.assert_allclose(run(grads[0], {x: x_value}), 2 * x_value + 3.0, rtol=1e-12)


def test_gradients_with_grad_ys_scales_the_seed(rng):
    x_value = rng.standard_normal(3)
    x = tf.placeholder(tf.float64, shape=(3,))
    seed = np.array([1.0, -2.0, 0.5])
    (grad,) = tf.gradients(tf.square(x), [x], grad_ys=tf.constant(seed))
    np.testing.assert_allclose(run(grad, {x: x_value}), 2 * x_value * seed, rtol=1e-12)


def test_gradient_with_respect_to_a_variable_matches_placeholder_gradient(rng):
    w_value = rng.standard_normal((4, 2))
    x_value = rng.standard_normal((3, 4))
    w = tf.Variable(w_value)
    loss = weighted_sum(tf.tanh(tf.matmul(tf.constant(x_value), w)))
    (grad,) = tf.gradients(loss, [w])
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        from_variable = sess.run(grad)
    from_placeholder = check_gradients(
        lambda w: weighted_sum(tf.tanh(tf.matmul(tf.constant(x_value), w))), w_value)[0]
    np.testing.assert_allclose(from_variable, from_placeholder, rtol=1e-12)


def test_gradient_through_a_float_cast_keeps_the_input_dtype(rng):
    w_value = rng.standard_normal((2, 3))
    x = tf.placeholder(tf.float64, shape=(2, 3))
    y = tf.cast(tf.cast(x, tf.float32) * tf.constant(w_value, dtype=tf.float32), tf.float64)
    (grad,) = tf.gradients(tf.reduce_sum(y), [x])
    value = run(grad, {x: rng.standard_normal((2, 3))})
    assert grad.dtype == tf.float64 and value.dtype == np.float64
    np.testing.assert_allclose(value, w_value, rtol=1e-6)


def test_no_gradient_flows_through_an_integer_cast():
    x = tf.placeholder(tf.float64, shape=(3,))
    assert tf.gradients(tf.reduce_sum(tf.cast(tf.cast(x, tf.int32), tf.float64)), [x]) == [None]


# -- non-differentiable ops: forward values -----------------------------------------------------

@pytest.mark.parametrize("axis", [None, 0, 1, -1], ids=str)
def test_argmax_matches_numpy(axis, rng):
    x_value = rng.standard_normal((3, 4))
    x = tf.placeholder(tf.float64, shape=(3, 4))
    y = tf.argmax(x) if axis is None else tf.argmax(x, axis=axis)
    expected = np.argmax(x_value, axis=0 if axis is None else axis)
    value = run(y, {x: x_value})
    assert value.dtype == np.int64 and y.dtype == tf.int64
    assert y.shape == expected.shape
    np.testing.assert_array_equal(value, expected)


def test_argmax_output_type():
    y = tf.argmax(tf.constant([[1.0, 3.0, 2.0]]), axis=1, output_type=tf.int32)
    value = run(y)
    assert y.dtype == tf.int32 and value.dtype == np.int32
    np.testing.assert_array_equal(value, [1])


def test_equal_matches_numpy_with_broadcasting():
    a_value = np.array([[1, 2, 3], [3, 2, 1]])
    b_value = np.array([1, 2, 1])
    a = tf.placeholder(tf.int32, shape=(2, 3))
    y = tf.equal(a, tf.constant(b_value, dtype=tf.int32))
    value = run(y, {a: a_value})
    assert y.dtype == tf.bool_ and value.dtype == np.bool_ and y.shape == (2, 3)
    np.testing.assert_array_equal(value, a_value == b_value)


def test_accuracy_from_argmax_equal_and_cast():
    logits = tf.constant([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    labels = tf.constant([1, 1, 1], dtype=tf.int64)
    accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1), labels), tf.float32))
    assert run(accuracy) == pytest.approx(2 / 3)


@pytest.mark.parametrize("value, dtype", [
    pytest.param(np.array([-1.7, -0.2, 0.0, 0.6, 2.9]), tf.int32, id="float-to-int"),
    pytest.param(np.array([-3, 0, 7], dtype=np.int32), tf.float64, id="int-to-float"),
    pytest.param(np.array([True, False]), tf.float32, id="bool-to-float"),
    pytest.param(np.array([0.0, 2.5, -1.0]), tf.bool_, id="float-to-bool"),
    pytest.param(np.array([1.0 / 3.0]), tf.float32, id="float64-to-float32"),
])
def test_cast_matches_numpy(value, dtype):
    y = tf.cast(tf.constant(value), dtype)
    result = run(y)
    assert y.dtype == dtype and result.dtype == dtype
    np.testing.assert_array_equal(result, value.astype(dtype))


# -- operator overloads -------------------------------------------------------------------------

OPERATOR_CASES = [
    pytest.param(lambda a, b: a + b, id="a+b"),
    pytest.param(lambda a, b: a - b, id="a-b"),
    pytest.param(lambda a, b: a * b, id="a*b"),
    pytest.param(lambda a, b: a / b, id="a/b"),
    pytest.param(lambda a, b: a @ b.T if isinstance(b, np.ndarray)
                 else a @ tf.transpose(b), id="a@b"),
    pytest.param(lambda a, b: -a, id="-a"),
    pytest.param(lambda a, b: 2.0 + a, id="2+a"),
    pytest.param(lambda a, b: 2.0 - a, id="2-a"),
    pytest.param(lambda a, b: a * 3.0, id="a*3"),
    pytest.param(lambda a, b: 2.0 / b, id="2/b"),
    pytest.param(lambda a, b: a - b * 2.0 / (a + 5.0), id="expression"),
    pytest.param(lambda a, b: a[1:3], id="a[1:3]"),
    pytest.param(lambda a, b: a[:, 0], id="a[:,0]"),
    pytest.param(lambda a, b: a[::2, 1:], id="a[::2,1:]"),
    pytest.param(lambda a, b: a[..., None], id="a[...,None]"),
    pytest.param(lambda a, b: a[-1], id="a[-1]"),
]


@pytest.mark.parametrize("expression", OPERATOR_CASES)
def test_operator_overload_values_and_gradients(expression, rng):
    a_value = rng.standard_normal((4, 3))
    b_value = away_from_zero(rng, (4, 3), 0.5, 1.5)
    a = tf.placeholder(tf.float64, shape=(4, 3))
    b = tf.placeholder(tf.float64, shape=(4, 3))
    y = expression(a, b)
    expected = expression(a_value, b_value)
    assert y.dtype == tf.float64 and y.shape == expected.shape
    np.testing.assert_allclose(run(y, {a: a_value, b: b_value}), expected, rtol=1e-12)
    # The zero term keeps both inputs connected to the loss, so each has a gradient.
    check_gradients(lambda a, b: weighted_sum(expression(a, b)) + 0.0 * tf.reduce_sum(a + b),
                    a_value, b_value)


def test_python_numbers_take_the_dtype_of_the_tensor():
    x = tf.placeholder(tf.int32, shape=(2,))
    doubled = x * 2
    assert doubled.dtype == tf.int32
    np.testing.assert_array_equal(run(doubled, {x: [3, 4]}), [6, 8])
    f = tf.placeholder(tf.float32, shape=(2,))
    halved = 1.0 - f / 2
    assert halved.dtype == tf.float32
    np.testing.assert_allclose(run(halved, {f: [3.0, 4.0]}), [-0.5, -1.0])


@pytest.mark.parametrize("pos_weight", [None, 3.0])
def test_sigmoid_and_weighted_cross_entropy_forward_and_gradients(pos_weight, rng):
    logits_value = np.concatenate([rng.standard_normal(6), [80.0, -80.0]]).reshape(2, 4)
    labels_value = rng.random((2, 4))
    labels = tf.placeholder(tf.float64, shape=(2, 4))
    logits = tf.placeholder(tf.float64, shape=(2, 4))

    def loss_of(labels, logits):
        if pos_weight is None:
            return tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
        return tf.nn.weighted_cross_entropy_with_logits(labels=labels, logits=logits,
                                                        pos_weight=pos_weight)

    q = 1.0 if pos_weight is None else pos_weight
    p = 1.0 / (1.0 + np.exp(-logits_value))
    with np.errstate(divide="ignore"):
        expected = -(q * labels_value * np.log(p) + (1 - labels_value) * np.log1p(-p))
    # The reference overflows where the logits are ±80; the op does not.
    stable = (1 - labels_value) * logits_value + (1 + (q - 1) * labels_value) * (
        np.maximum(-logits_value, 0) + np.log1p(np.exp(-np.abs(logits_value))))
    got = run(loss_of(labels, logits), {labels: labels_value, logits: logits_value})
    assert np.isfinite(got).all()
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-10)
    np.testing.assert_allclose(got, stable, rtol=1e-12)
    small = logits_value.copy()
    small[small > 10] = 2.0
    small[small < -10] = -2.0
    check_gradients(lambda labels, logits: weighted_sum(loss_of(labels, logits)),
                    labels_value, small)


# -- embedding_lookup --------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["mod", "div"])
def test_embedding_lookup_over_a_list_of_tables_matches_the_whole_table(strategy, rng):
    sizes = [5, 4, 4]  # 13 rows: "div" gives the first table the extra row
    whole = rng.standard_normal((13, 3))
    if strategy == "mod":
        tables = [whole[k::3] for k in range(3)]
    else:
        tables = [whole[:5], whole[5:9], whole[9:]]
    assert [len(t) for t in tables] == sizes
    ids_value = np.array([[0, 12, 5], [7, 7, 1]])
    ids = tf.constant(ids_value)
    looked_up = tf.nn.embedding_lookup([tf.constant(t) for t in tables], ids,
                                       partition_strategy=strategy)
    np.testing.assert_array_equal(run(looked_up), whole[ids_value])
    assert looked_up.shape == (2, 3, 3)
    check_gradients(lambda *ts: weighted_sum(tf.nn.embedding_lookup(
        list(ts), ids, partition_strategy=strategy)), *tables)


def test_embedding_lookup_max_norm_clips_the_rows_it_returns(rng):
    table = rng.standard_normal((6, 4)) * 3
    ids = tf.constant(np.array([0, 3, 3, 5]))
    rows = run(tf.nn.embedding_lookup(tf.constant(table), ids, max_norm=1.5))
    norms = np.linalg.norm(table[[0, 3, 3, 5]], axis=1)
    np.testing.assert_allclose(rows, table[[0, 3, 3, 5]] * np.minimum(1, 1.5 / norms)[:, None])
    check_gradients(lambda t: weighted_sum(tf.nn.embedding_lookup(t, ids, max_norm=1.5)),
                    table)
    small = table * 0.01  # rows under the bound pass through unchanged
    check_gradients(lambda t: weighted_sum(tf.nn.embedding_lookup(t, ids, max_norm=1.5)),
                    small)


def test_embedding_lookup_errors_name_the_problem():
    tables = [tf.constant(np.zeros((2, 2))), tf.constant(np.zeros((2, 2)))]
    with pytest.raises(ValueError, match="unknown partition_strategy 'hash'"):
        tf.nn.embedding_lookup(tables, tf.constant([0]), partition_strategy="hash")
    with pytest.raises(tf.errors.InvalidArgumentError, match="id 4 is out of range"):
        run(tf.nn.embedding_lookup(tables, tf.constant(np.array([1, 4]))))


# -- sparse tensors ----------------------------------------------------------------------------
SPARSE_INDICES = np.array([[0, 0], [0, 1], [0, 2], [2, 0], [3, 0], [3, 1]])
SPARSE_IDS = np.array([1, 3, 1, 4, 0, 2])
SPARSE_WEIGHTS = np.array([0.5, 2.0, 1.0, 3.0, -1.0, 0.25])


def _combined(table, combiner, weights):
    out = np.zeros((5, table.shape[1]))
    w = np.ones(len(SPARSE_IDS)) if weights is None else weights
    for row in range(5):
        mine = SPARSE_INDICES[:, 0] == row
        if not mine.any():
            continue
        total = (table[SPARSE_IDS[mine]] * w[mine, None]).sum(axis=0)
        denom = {"sum": 1.0, "mean": w[mine].sum(), "sqrtn": np.sqrt((w[mine] ** 2).sum())}
        out[row] = total / denom[combiner]
    return out


@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
@pytest.mark.parametrize("weighted", [False, True])
def test_embedding_lookup_sparse_combines_each_rows_ids(combiner, weighted, rng):
    table_value = rng.standard_normal((6, 3))
    sp_ids = tf.sparse_placeholder(tf.int64, shape=(5, 3), name="ids")
    sp_weights = tf.sparse_placeholder(tf.float64, shape=(5, 3), name="weights")
    feeds = {sp_ids: tf.SparseTensorValue(SPARSE_INDICES, SPARSE_IDS, [5, 3])}
    if weighted:
        feeds[sp_weights] = (SPARSE_INDICES, SPARSE_WEIGHTS, [5, 3])
    table = tf.placeholder(tf.float64, shape=(6, 3))
    out = tf.nn.embedding_lookup_sparse(table, sp_ids, sp_weights if weighted else None,
                                        combiner=combiner)
    feeds[table] = table_value
    expected = _combined(table_value, combiner, SPARSE_WEIGHTS if weighted else None)
    np.testing.assert_allclose(run(out, feeds), expected, rtol=1e-12)
    # The gradient for the table, against finite differences.
    loss = weighted_sum(out, shape=(5, 3))
    analytic = run(tf.gradients(loss, [table])[0], feeds)
    analytic = analytic.to_dense() if hasattr(analytic, "to_dense") else analytic
    numeric = np.zeros_like(table_value)
    for index in np.ndindex(table_value.shape):
        for sign in (1, -1):
            shifted = table_value.copy()
            shifted[index] += sign * 1e-6
            numeric[index] += sign * run(loss, {**feeds, table: shifted}) / 2e-6
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


def test_embedding_lookup_sparse_errors_name_the_problem():
    sp = tf.sparse_placeholder(tf.int64)
    table = tf.constant(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="unknown combiner 'max'"):
        tf.nn.embedding_lookup_sparse(table, sp, None, combiner="max")
    with pytest.raises(TypeError, match="must be SparseTensors"):
        tf.nn.embedding_lookup_sparse(table, tf.constant([0]), None)
