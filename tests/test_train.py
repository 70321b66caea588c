"""Optimizers: update rules against their formulas, minimize, global step, sparse updates."""

import numpy as np
import pytest

import psflow as tf
from psflow.indexed_slices import IndexedSlices
from psflow.train import update_rules
from psflow.train.update_rules import UpdateRule


@pytest.fixture(autouse=True)
def fresh_graph():
    with tf.Graph().as_default() as graph:
        yield graph


def _reference_steps(name, w, grads, **hyper):
    """The TF1 formulas, written out independently of update_rules."""
    w = w.copy()
    lr = hyper["learning_rate"]
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    acc = np.full_like(w, hyper.get("initial_accumulator_value", 0.1))
    z = np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        if name == "sgd":
            w = w - lr * g
        elif name == "momentum":
            m = hyper["momentum"] * m + g
            w = w - lr * (g + hyper["momentum"] * m if hyper.get("use_nesterov") else m)
        elif name == "adagrad":
            acc = acc + g * g
            w = w - lr * g / np.sqrt(acc)
        elif name == "ftrl":  # TensorFlow's ApplyFtrl
            power = -hyper.get("learning_rate_power", -0.5)
            l1, l2 = hyper.get("l1", 0.0), hyper.get("l2", 0.0)
            new_acc = acc + g * g
            z = z + g - (new_acc ** power - acc ** power) / lr * w
            w = np.where(np.abs(z) > l1,
                         (np.sign(z) * l1 - z) / (new_acc ** power / lr + 2 * l2), 0.0)
            acc = new_acc
        elif name == "rmsprop":  # TF1's ApplyRMSProp / ApplyCenteredRMSProp, ms from 1
            decay, mom_coef = hyper.get("decay", 0.9), hyper.get("momentum", 0.0)
            eps = hyper.get("epsilon", 1e-10)
            if t == 1:
                ms, mg, mom = np.ones_like(w), np.zeros_like(w), np.zeros_like(w)
            ms = decay * ms + (1 - decay) * g * g
            denominator = ms
            if hyper.get("centered"):
                mg = decay * mg + (1 - decay) * g
                denominator = ms - mg * mg
            mom = mom_coef * mom + lr * g / np.sqrt(denominator + eps)
            w = w - mom
        elif name == "adadelta":  # TF1's ApplyAdadelta
            rho, eps = hyper.get("rho", 0.95), hyper.get("epsilon", 1e-8)
            if t == 1:
                accum, accum_update = np.zeros_like(w), np.zeros_like(w)
            accum = rho * accum + (1 - rho) * g * g
            update = np.sqrt(accum_update + eps) / np.sqrt(accum + eps) * g
            accum_update = rho * accum_update + (1 - rho) * update * update
            w = w - lr * update
        elif name == "adam":
            b1, b2, eps = 0.9, 0.999, 1e-8
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            w = w - lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (np.sqrt(v) + eps)
    return w


@pytest.mark.parametrize("name,hyper", [
    ("sgd", {"learning_rate": 0.1}),
    ("momentum", {"learning_rate": 0.1, "momentum": 0.9}),
    ("momentum", {"learning_rate": 0.1, "momentum": 0.9, "use_nesterov": True}),
    ("adagrad", {"learning_rate": 0.1, "initial_accumulator_value": 0.1}),
    ("adam", {"learning_rate": 0.01}),
    ("ftrl", {"learning_rate": 0.1}),
    ("ftrl", {"learning_rate": 0.3, "learning_rate_power": -0.7, "l1": 0.05, "l2": 0.1,
              "initial_accumulator_value": 0.2}),
    ("rmsprop", {"learning_rate": 0.01}),
    ("rmsprop", {"learning_rate": 0.01, "decay": 0.8, "momentum": 0.5, "epsilon": 1e-6,
                 "centered": True}),
    ("adadelta", {"learning_rate": 1.0}),
])
def test_update_rules_follow_their_formulas(name, hyper):
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(3, 4))
    grads = [rng.normal(size=(3, 4)) for _ in range(5)]
    rule = UpdateRule(name, **hyper)
    w = w0.copy()
    slots = rule.init_slots(w)
    for g in grads:
        rule.apply(w, g, slots)
    np.testing.assert_allclose(w, _reference_steps(name, w0, grads, **hyper), rtol=1e-12)


@pytest.mark.parametrize("optimizer", [
    lambda: tf.train.GradientDescentOptimizer(0.1),
    lambda: tf.train.MomentumOptimizer(0.1, momentum=0.9),
    lambda: tf.train.AdagradOptimizer(0.1),
    lambda: tf.train.AdamOptimizer(0.01),
    lambda: tf.train.FtrlOptimizer(0.1, l1_regularization_strength=0.01),
    lambda: tf.train.RMSPropOptimizer(0.01, momentum=0.9, centered=True),
    lambda: tf.train.AdadeltaOptimizer(1.0),
])
def test_minimize_matches_the_update_rule_on_the_graph_gradient(optimizer):
    opt = optimizer()
    target = np.array([[1.0, -2.0], [3.0, 0.5]])
    w = tf.Variable(np.zeros((2, 2)), name="w")
    loss = tf.reduce_sum(tf.square(w - target))
    train = opt.minimize(loss)
    expected = np.zeros((2, 2))
    slots = opt.rule.init_slots(expected)
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        for _ in range(4):
            opt.rule.apply(expected, 2 * (expected - target), slots)
            sess.run(train)
        np.testing.assert_allclose(sess.run(w), expected, rtol=1e-12)


def test_linear_regression_converges_to_the_true_weights():
    rng = np.random.default_rng(1)
    true_w = np.array([[2.0], [-3.0], [0.5]])
    data = rng.normal(size=(256, 3))
    labels = data @ true_w + 4.0
    x = tf.placeholder(tf.float64, shape=(None, 3))
    y = tf.placeholder(tf.float64, shape=(None, 1))
    w = tf.Variable(np.zeros((3, 1)))
    b = tf.Variable(np.zeros(1))
    loss = tf.reduce_mean(tf.square(x @ w + b - y))
    step = tf.train.get_or_create_global_step()
    train = tf.train.GradientDescentOptimizer(0.1).minimize(loss, global_step=step)
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        for _ in range(300):
            sess.run(train, {x: data, y: labels})
        np.testing.assert_allclose(sess.run(w), true_w, atol=1e-6)
        np.testing.assert_allclose(sess.run(b), [4.0], atol=1e-6)
        assert tf.train.global_step(sess, step) == 300


def test_compute_and_apply_gradients_can_be_split():
    w = tf.Variable(np.array([1.0, 2.0]))
    loss = tf.reduce_sum(w * w)
    opt = tf.train.GradientDescentOptimizer(0.5)
    grads_and_vars = opt.compute_gradients(loss)
    assert [v for _, v in grads_and_vars] == [w]
    clipped = [(g * 0.5, v) for g, v in grads_and_vars]
    train = opt.apply_gradients(clipped)
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        sess.run(train)
        np.testing.assert_allclose(sess.run(w), [0.5, 1.0])


def test_non_trainable_variables_are_left_alone():
    w = tf.Variable(1.0)
    frozen = tf.Variable(5.0, trainable=False)
    loss = w * frozen
    train = tf.train.GradientDescentOptimizer(0.1).minimize(loss)
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        sess.run(train)
        assert sess.run(frozen) == 5.0
        assert sess.run(w) == pytest.approx(0.5)


def test_embedding_gradient_updates_only_looked_up_rows():
    table = tf.Variable(np.ones((5, 2)), name="embeddings")
    ids = tf.placeholder(tf.int32, shape=(None,))
    loss = tf.reduce_sum(tf.gather(table, ids))
    (grad, _), = tf.train.GradientDescentOptimizer(1.0).compute_gradients(loss)
    train = tf.train.GradientDescentOptimizer(1.0).minimize(loss)
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        sparse = sess.run(grad, {ids: [1, 3, 1]})
        assert isinstance(sparse, IndexedSlices)
        assert sorted(sparse.indices.tolist()) == [1, 1, 3]
        sess.run(train, {ids: [1, 3, 1]})
        np.testing.assert_allclose(sess.run(table),
                                   [[1, 1], [-1, -1], [1, 1], [0, 0], [1, 1]])


@pytest.mark.parametrize("name,hyper", [
    ("sgd", {"learning_rate": 0.1}),
    ("adagrad", {"learning_rate": 0.1}),
    ("adam", {"learning_rate": 0.1}),
    ("rmsprop", {"learning_rate": 0.1, "momentum": 0.5, "centered": True}),
    ("adadelta", {"learning_rate": 1.0}),
])
def test_sparse_updates_equal_dense_updates_on_the_touched_rows(name, hyper):
    rng = np.random.default_rng(2)
    values = rng.normal(size=(3, 4))
    indices = np.array([0, 2, 0])
    sparse = IndexedSlices(values, indices, (5, 4))
    rule = UpdateRule(name, **hyper)
    w_sparse, w_dense = np.ones((5, 4)), np.ones((5, 4))
    s_sparse, s_dense = rule.init_slots(w_sparse), rule.init_slots(w_dense)
    rule.apply(w_sparse, sparse, s_sparse)
    rule.apply(w_dense, sparse.to_dense(), s_dense)
    np.testing.assert_allclose(w_sparse[[0, 2]], w_dense[[0, 2]], rtol=1e-12)
    np.testing.assert_allclose(w_sparse, w_dense, rtol=1e-12)


def test_ftrl_updates_only_the_touched_rows_and_l1_makes_exact_zeros():
    rule = UpdateRule("ftrl", learning_rate=0.5, l1=0.3)
    w = np.ones((5, 2))
    slots = rule.init_slots(w)
    dense = np.ones((5, 2))
    dense_slots = rule.init_slots(dense)
    grad = IndexedSlices(np.array([[0.1, 2.0], [0.1, 2.0]]), np.array([1, 3]), (5, 2))
    rule.apply(w, grad, slots)
    rule.apply(dense, grad.to_dense(), dense_slots)
    np.testing.assert_allclose(w[[1, 3]], dense[[1, 3]], rtol=1e-12)
    np.testing.assert_array_equal(w[[0, 2, 4]], 1.0)  # lazy: untouched rows keep their value
    np.testing.assert_array_equal(slots["accum"][[0, 2, 4]], 0.1)
    assert (w[[1, 3], 0] == 0.0).all() and (w[[1, 3], 1] != 0.0).all()  # |z| <= l1: zero


def test_adam_is_lazy_on_sparse_gradients_unless_asked_to_be_dense():
    rng = np.random.default_rng(3)
    grads = [IndexedSlices(rng.normal(size=(2, 3)), np.array(rows), (4, 3))
             for rows in ([0, 2], [2, 2], [0, 1])]
    lazy, dense = UpdateRule("adam", learning_rate=0.1), UpdateRule("adam", learning_rate=0.1,
                                                                    lazy_sparse=False)
    w_lazy, w_dense, w_ref = np.ones((4, 3)), np.ones((4, 3)), np.ones((4, 3))
    s_lazy, s_dense, s_ref = lazy.init_slots(w_lazy), dense.init_slots(w_dense), \
        dense.init_slots(w_ref)
    for grad in grads:
        lazy.apply(w_lazy, grad, s_lazy)
        dense.apply(w_dense, grad, s_dense)
        dense.apply(w_ref, grad.to_dense(), s_ref)
    np.testing.assert_allclose(w_dense, w_ref, rtol=1e-12)  # TF1's dense Adam
    np.testing.assert_array_equal(w_lazy[3], 1.0)  # never touched: value and moments kept
    np.testing.assert_array_equal(s_lazy["m"][3], 0.0)
    # row 1 is touched only at step 3: its one lazy update uses step 3's bias correction
    g = grads[2].values[1]
    m, v = 0.1 * g, 0.001 * g * g
    lr_t = 0.1 * np.sqrt(1 - 0.999 ** 3) / (1 - 0.9 ** 3)
    np.testing.assert_allclose(w_lazy[1], 1.0 - lr_t * m / (np.sqrt(v) + 1e-8), rtol=1e-12)
    # row 2, touched at steps 1 and 2 (twice in step 2, summed), then left as it was
    assert not np.allclose(w_lazy[2], w_dense[2])  # dense decayed its moments at step 3
    assert int(s_lazy["t"]) == 3


def test_update_rules_refuse_a_gradient_of_the_wrong_shape():
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\(2, 3\).*\(3, 2\)"):
        update_rules.sgd(np.zeros((3, 2)), np.zeros((2, 3)), {}, learning_rate=0.1)
    rows_out_of_range = IndexedSlices(np.ones((1, 2)), np.array([7]), (3, 2))
    with pytest.raises(tf.errors.InvalidArgumentError, match="out of range"):
        update_rules.sgd(np.zeros((3, 2)), rows_out_of_range, {}, learning_rate=0.1)


def test_unknown_update_rule_is_named():
    with pytest.raises(ValueError, match="'nadam'"):
        UpdateRule("nadam", learning_rate=0.1)


def test_update_rule_spec_round_trips():
    rule = UpdateRule("adam", learning_rate=0.01, beta1=0.8)
    again = UpdateRule(**rule.spec())
    assert again.spec() == rule.spec()
