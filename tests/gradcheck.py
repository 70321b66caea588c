"""Float64 central finite-difference gradient checks through psflow's public API.

`check_gradients(loss_fn, *arrays)` feeds each array to a float64 placeholder, builds the
scalar `loss_fn(*placeholders)`, and compares `tf.gradients` with central differences of the
loss. `weighted_sum(y)` turns any output into such a loss with fixed random weights, so that a
gradient that is wrong by a permutation or a sign cannot pass by symmetry.
"""

import numpy as np

import psflow as tf

EPS = 1e-6
RTOL = 1e-5
ATOL = 1e-7


def weighted_sum(y, shape=None, seed=1234):
    """`reduce_sum(y * w)` for a fixed float64 `w` drawn from N(0, 1) with `y`'s shape (or
    `shape` when the static shape of `y` is not fully known)."""
    shape = y.shape if shape is None else tuple(shape)
    if shape is None or None in shape:
        raise ValueError(f"weighted_sum needs the full shape of {y.name!r}, got {shape}")
    w = np.random.default_rng(seed).standard_normal(shape)
    return tf.reduce_sum(y * tf.constant(w, dtype=tf.float64))


def numeric_gradient(loss_of, arrays, index, eps=EPS):
    """d loss / d arrays[index] by central differences; `loss_of(arrays)` returns a float."""
    base = [np.array(a, dtype=np.float64) for a in arrays]
    x = base[index]
    grad = np.zeros_like(x)
    for pos in np.ndindex(*x.shape):
        original = x[pos]
        x[pos] = original + eps
        plus = loss_of(base)
        x[pos] = original - eps
        minus = loss_of(base)
        x[pos] = original
        grad[pos] = (plus - minus) / (2 * eps)
    return grad


def dense(value):
    """A gradient value as a dense array (IndexedSlices are summed into their rows)."""
    if isinstance(value, tf.IndexedSlices):
        return value.to_dense()
    return np.asarray(value)


def check_gradients(loss_fn, *arrays, static_shapes=None, eps=EPS, rtol=RTOL, atol=ATOL):
    """Asserts that the analytic gradient of `loss_fn(*placeholders)` w.r.t. every placeholder
    matches central differences, and that each gradient has its input's shape.

    Each array is fed to a float64 placeholder whose static shape is the array's shape, or the
    matching entry of `static_shapes` (use None entries for unknown dimensions or rank).
    Returns the analytic gradients as fetched (IndexedSlices stay sparse).
    """
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    if static_shapes is None:
        static_shapes = [a.shape for a in arrays]
    inputs = [tf.placeholder(tf.float64, shape=shape, name=f"input{i}")
              for i, shape in enumerate(static_shapes)]
    loss = loss_fn(*inputs)
    assert loss.dtype == tf.float64, f"loss has dtype {loss.dtype}, expected float64"
    grads = tf.gradients(loss, inputs)
    assert all(g is not None for g in grads), f"some gradient is None: {grads}"

    with tf.Session() as sess:
        def loss_of(values):
            value = sess.run(loss, dict(zip(inputs, values, strict=True)))
            assert np.ndim(value) == 0, f"loss must be a scalar, got shape {np.shape(value)}"
            return float(value)

        analytic = sess.run(grads, dict(zip(inputs, arrays, strict=True)))
        for i, (array, got) in enumerate(zip(arrays, analytic, strict=True)):
            got_dense = dense(got)
            assert got_dense.shape == array.shape, (
                f"gradient of input {i} has shape {got_dense.shape}, input has {array.shape}")
            expected = numeric_gradient(loss_of, arrays, i, eps)
            np.testing.assert_allclose(got_dense, expected, rtol=rtol, atol=atol,
                                       err_msg=f"gradient of input {i}")
    return analytic
