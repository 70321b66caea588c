"""Graph construction and Session semantics: fetch structures, subgraph execution, state."""

import collections
import threading

import numpy as np
import pytest

import psflow as tf
from psflow.graph import Node


@pytest.fixture(autouse=True)
def fresh_graph():
    with tf.Graph().as_default() as graph:
        yield graph


class CountingOp(Node):
    """An identity op that counts how often it is computed."""

    def __init__(self, x):
        super().__init__((x,), shape=x.shape, dtype=x.dtype)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x


def test_fetch_structures_are_preserved():
    a = tf.constant(1.0)
    b = tf.constant([2.0, 3.0])
    Pair = collections.namedtuple("Pair", "first second")
    with tf.Session() as sess:
        assert sess.run(a) == 1.0
        assert isinstance(sess.run([a, b]), list)
        first, second = sess.run((a, b))
        assert first == 1.0 and second.tolist() == [2.0, 3.0]
        nested = sess.run({"x": a, "pair": Pair(a, [b, a])})
        assert nested["x"] == 1.0
        assert isinstance(nested["pair"], Pair)
        assert nested["pair"].second[0].tolist() == [2.0, 3.0]
        assert sess.run(a.name) == 1.0
        assert sess.run(a.name + ":0") == 1.0


def test_each_node_is_computed_once_and_only_when_needed():
    x = tf.placeholder(tf.float32, shape=(2,), name="x")
    unused_input = tf.placeholder(tf.float32, name="never_fed")
    shared = CountingOp(x * 2.0)
    unused = CountingOp(unused_input)
    total = tf.reduce_sum(shared + shared * shared)
    with tf.Session() as sess:
        value = sess.run([total, shared], {x: [1.0, 2.0]})
        assert value[0] == pytest.approx(2 + 4 + 4 + 16)
        assert shared.calls == 1
        assert unused.calls == 0


def test_feeding_an_intermediate_node_skips_its_inputs():
    x = tf.placeholder(tf.float32, name="x")
    hidden = CountingOp(x * 3.0)
    out = hidden + 1.0
    with tf.Session() as sess:
        assert sess.run(out, {hidden: 10.0}) == 11.0
        assert hidden.calls == 0


def test_feed_values_are_cast_to_the_placeholder_dtype():
    x = tf.placeholder(tf.float32, shape=(None, 2))
    with tf.Session() as sess:
        out = sess.run(x * 1.0, {x: np.ones((3, 2), dtype=np.float64)})
        assert out.dtype == np.float32 and out.shape == (3, 2)
        assert sess.run(x * 1.0, {x: [[1, 2]]}).tolist() == [[1.0, 2.0]]


def test_python_numbers_take_the_dtype_of_the_other_operand():
    x = tf.placeholder(tf.float64)
    y = 2 * x + 1
    assert y.dtype == np.float64
    with tf.Session() as sess:
        assert sess.run(y, {x: 1.5}) == 4.0


def test_variables_persist_and_fetched_values_do_not_alias_them():
    v = tf.Variable(np.array([1.0, 2.0], dtype=np.float32), name="v")
    step = v.assign_add([1.0, 1.0])
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        before = sess.run(v)
        before[0] = 100.0  # must not reach the variable
        sess.run(step)
        sess.run(step)
        assert sess.run(v).tolist() == [3.0, 4.0]
        sess.run(v.assign([0.0, -1.0]))
        assert sess.run(v).tolist() == [0.0, -1.0]
        sess.run(v.assign_sub([1.0, 1.0]))
        assert sess.run(v).tolist() == [-1.0, -2.0]


def test_a_train_step_does_not_change_values_fetched_before_it():
    w = tf.Variable(np.ones(3, dtype=np.float32))
    loss = tf.reduce_sum(w * w)
    train = tf.train.GradientDescentOptimizer(0.25).minimize(loss)
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        view = sess.run(tf.reshape(w, (3, 1)))
        sess.run(train)
        assert view.ravel().tolist() == [1.0, 1.0, 1.0]
        assert sess.run(w).tolist() == [0.5, 0.5, 0.5]


def test_sessions_keep_separate_variable_values():
    v = tf.Variable(1.0)
    inc = v.assign_add(1.0)
    with tf.Session() as one, tf.Session() as two:
        one.run(v.initializer)
        two.run(v.initializer)
        one.run(inc)
        assert one.run(v) == 2.0
        assert two.run(v) == 1.0


def test_variable_initial_value_can_be_a_node_or_callable():
    a = tf.Variable(tf.constant([1.0, 2.0]) * 2.0, name="a")
    b = tf.Variable(lambda: np.zeros((2, 2)), name="b", dtype=tf.float32)
    assert a.shape == (2,) and b.dtype == np.float32
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        assert sess.run(a).tolist() == [2.0, 4.0]
        assert sess.run(b).dtype == np.float32


def test_graph_names_are_unique_and_scoped(fresh_graph):
    a = tf.constant(1.0, name="c")
    b = tf.constant(2.0, name="c")
    with tf.name_scope("layer1"):
        w = tf.Variable(0.0, name="w")
        s = a + b
    assert (a.name, b.name) == ("c", "c_1")
    assert w.name == "layer1/w"
    assert s.name.startswith("layer1/Add")
    assert tf.global_variables() == [w]
    assert fresh_graph.get_node_by_name("layer1/w") is w


def test_as_default_routes_new_nodes_and_restores_the_outer_graph(fresh_graph):
    inner = tf.Graph()
    with inner.as_default():
        c = tf.constant(1.0)
        assert tf.get_default_graph() is inner
    assert c.graph is inner
    assert tf.get_default_graph() is fresh_graph


def test_one_graph_runs_from_several_threads():
    x = tf.placeholder(tf.float64, shape=(None,))
    y = tf.reduce_sum(tf.square(x) + x)
    sess = tf.Session()
    errors = []

    def worker(k):
        for _ in range(200):
            data = np.full(5, float(k))
            got = sess.run(y, {x: data})
            if got != 5 * (k * k + k):
                errors.append((k, got))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_eval_uses_the_default_session():
    c = tf.constant(3.0)
    with tf.Session():
        assert c.eval() == 3.0
    with pytest.raises(ValueError, match="no default session"):
        c.eval()


def test_closed_session_refuses_to_run():
    sess = tf.Session()
    sess.close()
    with pytest.raises(RuntimeError, match="closed"):
        sess.run(tf.constant(1.0))


def test_graph_seed_makes_initial_values_repeatable():
    def initial_values():
        with tf.Graph().as_default():
            tf.set_random_seed(7)
            w = tf.get_variable("w", shape=(4, 3))
            r = tf.random_normal((2,))
            with tf.Session() as sess:
                sess.run(tf.global_variables_initializer())
                return sess.run(w), sess.run(r)

    (w1, r1), (w2, r2) = initial_values(), initial_values()
    np.testing.assert_array_equal(w1, w2)
    np.testing.assert_array_equal(r1, r2)
    limit = np.sqrt(6.0 / (4 + 3))
    assert np.all(np.abs(w1) <= limit)


def test_random_ops_draw_anew_at_each_run():
    r = tf.random_uniform((1000,), seed=3)
    with tf.Session() as sess:
        first, second = sess.run(r), sess.run(r)
    assert not np.array_equal(first, second)
    assert 0.0 <= first.min() and first.max() < 1.0


def test_get_variable_draws_its_initial_value_only_when_initialized():
    drawn = []

    class Counting(tf.random_normal_initializer):
        def sample(self, shape, rng):
            drawn.append(shape)
            return super().sample(shape, rng)

    table = tf.get_variable("table", shape=(1000, 8), initializer=Counting(seed=5))
    assert drawn == []  # building the graph holds no table
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        first = sess.run(table)
        sess.run(table.initializer)
        np.testing.assert_array_equal(sess.run(table), first)  # seeded: the same values
    assert drawn == [(1000, 8), (1000, 8)]
    assert abs(first.std() - 1.0) < 0.05


def test_get_variable_refuses_a_duplicate_name():
    tf.get_variable("w", shape=(2,))
    with pytest.raises(ValueError, match="already exists"):
        tf.get_variable("w", shape=(2,))


def test_group_runs_every_input():
    a = tf.Variable(0.0)
    b = tf.Variable(0.0)
    both = tf.group(a.assign_add(1.0), b.assign_add(2.0))
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        assert sess.run(both) is None
        assert sess.run([a, b]) == [1.0, 2.0]
