"""get_embedding_variable in a session: rows by key, trained like a Variable's rows."""

import numpy as np
import pytest

import psflow as tf
from psflow.row_init import initial_rows


@pytest.fixture(autouse=True)
def fresh_graph():
    with tf.Graph().as_default() as graph:
        yield graph


KEYS = np.array([[9_000_000_000_000, -5], [-5, 17], [42, 9_000_000_000_000]], np.int64)
TARGETS = np.array([1.0, -1.0, 0.5], np.float32)


def train_table(optimizer, steps=4, **options):
    keys = tf.placeholder(tf.int64, (None, 2), name="keys")
    y = tf.placeholder(tf.float32, (None,), name="y")
    table = tf.get_embedding_variable("emb", embedding_dim=3, **options)
    rows = tf.nn.embedding_lookup(table, keys)
    loss = tf.reduce_mean(tf.square(tf.reduce_sum(rows, axis=[1, 2]) - y))
    train = optimizer.minimize(loss, global_step=tf.train.get_or_create_global_step())
    return keys, y, table, rows, train


@pytest.mark.parametrize("make", [lambda: tf.train.AdagradOptimizer(0.3),
                                  lambda: tf.train.AdamOptimizer(0.1),
                                  lambda: tf.train.FtrlOptimizer(
                                      0.2, l1_regularization_strength=0.01),
                                  lambda: tf.train.MomentumOptimizer(0.1, 0.9)],
                         ids=["adagrad", "adam", "ftrl", "momentum"])
def test_a_table_trains_as_a_dense_table_of_the_same_rows(make):
    keys, y, table, rows, train = train_table(make())
    distinct = np.unique(KEYS)
    first = initial_rows(table.initializer_spec, distinct, 3, np.float32)
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        for _ in range(4):
            sess.run(train, {keys: KEYS, y: TARGETS})
        got = sess.run(rows, {keys: distinct.reshape(-1, 1).repeat(2, axis=1)})[:, 0]
    with tf.Graph().as_default():
        ids = tf.placeholder(tf.int64, (None, 2))
        t = tf.placeholder(tf.float32, (None,))
        dense = tf.Variable(first, name="dense")
        loss = tf.reduce_mean(tf.square(tf.reduce_sum(tf.gather(dense, ids), axis=[1, 2]) - t))
        step = make().minimize(loss)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            for _ in range(4):
                sess.run(step, {ids: np.searchsorted(distinct, KEYS), t: TARGETS})
            expected = sess.run(dense)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_reads_outside_training_create_no_rows_and_unknown_keys_read_zeros():
    keys, y, table, rows, train = train_table(tf.train.GradientDescentOptimizer(0.1))
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        np.testing.assert_array_equal(sess.run(rows, {keys: KEYS}), np.zeros((3, 2, 3)))
        assert len(sess.store.tables[table]) == 0
        sess.run(train, {keys: KEYS, y: TARGETS})
        assert len(sess.store.tables[table]) == 4
        seen = sess.run(rows, {keys: [[42, 7]]})
        assert np.abs(seen[0, 0]).sum() > 0 and not seen[0, 1].any()  # 7 was never trained
        assert len(sess.store.tables[table]) == 4


def test_filter_and_eviction_options():
    option = tf.EmbeddingVariableOption(filter_option=tf.CounterFilter(filter_freq=2),
                                        evict_option=tf.GlobalStepEvict(steps_to_live=2))
    keys, y, table, rows, train = train_table(tf.train.GradientDescentOptimizer(0.1),
                                              ev_option=option,
                                              initializer=tf.ones_initializer())
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        store = sess.store.tables[table]
        sess.run(train, {keys: [[1, 2]], y: [0.0]})  # each seen once: not admitted
        assert len(store) == 0 and store.stats["dropped_gradients"] == 2
        sess.run(train, {keys: [[1, 3]], y: [0.0]})  # key 1 admitted (ones), then trained
        assert len(store) == 1
        np.testing.assert_allclose(sess.run(rows, {keys: [[1, 1]]})[0, 0],
                                   np.ones(3) - 0.1 * 2 * (3.0 + 0.0) * 1)
        for _ in range(4):
            sess.run(train, {keys: [[3, 3]], y: [0.0]})
        assert store.evict(global_step=6) == 1  # key 1, last updated at step 1
        assert sorted(store.export()[0].tolist()) == [3]



@pytest.mark.parametrize("filter_freq", [0, 1])
def test_a_filter_of_zero_or_one_admits_a_key_at_its_first_sighting(filter_freq):
    option = tf.EmbeddingVariableOption(filter_option=tf.CounterFilter(filter_freq=filter_freq))
    keys, y, table, rows, train = train_table(tf.train.GradientDescentOptimizer(0.1),
                                              ev_option=option,
                                              initializer=tf.ones_initializer())
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        store = sess.store.tables[table]
        sess.run(train, {keys: [[1, 2]], y: [0.0]})  # both seen once: both admitted, trained
        assert len(store) == 2 and store.stats["dropped_gradients"] == 0
        # loss (6 - 0)^2: each row moves by 0.1 * 2 * 6 from its ones
        np.testing.assert_allclose(sess.run(rows, {keys: [[1, 2]]})[0],
                                   np.full((2, 3), 1.0 - 0.1 * 2 * 6.0), rtol=1e-6)

def test_a_table_is_refused_where_it_would_be_read_whole():
    table = tf.get_embedding_variable("emb", embedding_dim=2)
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        with pytest.raises(tf.errors.InvalidArgumentError, match="'emb'.*lookups"):
            sess.run(table)
        with pytest.raises(tf.errors.InvalidArgumentError, match="'emb'.*lookups"):
            sess.run(tf.reduce_sum(table))
    with pytest.raises(TypeError, match="'emb' cannot be assigned"):
        table.assign(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="already exists"):
        tf.get_embedding_variable("emb", embedding_dim=2)
    with pytest.raises(ValueError, match="initializer.*not supported"):
        tf.get_embedding_variable("other", 2, initializer=tf.glorot_uniform_initializer())


def test_bad_keys_are_named():
    table = tf.get_embedding_variable("user", embedding_dim=2)
    with pytest.raises(TypeError, match="indices must be integers"):
        tf.gather(table, tf.placeholder(tf.float32, (None,)))
    keys = tf.placeholder(tf.int64, (None,))
    rows = tf.gather(table, keys)
    with tf.Session() as sess:
        with pytest.raises(tf.errors.FailedPreconditionError, match="uninitialized.*'user'"):
            sess.run(rows, {keys: [1]})
        sess.run(tf.global_variables_initializer())
        with pytest.raises(tf.errors.InvalidArgumentError, match="float64.*int64"):
            sess.run(rows, {keys: [1.5]})


def test_multi_hot_lookups_of_a_table():
    sp = tf.sparse_placeholder(tf.int64, name="ids")
    table = tf.get_embedding_variable("emb", 2, initializer=tf.ones_initializer())
    pooled = tf.nn.embedding_lookup_sparse(table, sp, None, combiner="mean")
    loss = tf.reduce_sum(pooled)
    train = tf.train.GradientDescentOptimizer(1.0).minimize(loss)
    value = tf.SparseTensorValue([[0, 0], [0, 1], [1, 0]], [10**12, -3, -3], [2, 2])
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        sess.run(train, {sp: value})
        got = sess.run(pooled, {sp: value})
    # row 0 = mean(key 10**12, key -3); row 1 = key -3. dloss/d(key -3) = 0.5 + 1
    np.testing.assert_allclose(got, [[(0.5 + -0.5) / 2] * 2, [-0.5] * 2])


def _steps(checkpoint_dir, steps, probe):
    with tf.Graph().as_default():
        keys, y, table, rows, train = train_table(tf.train.AdamOptimizer(0.1))
        hooks = [tf.train.StopAtStepHook(last_step=steps)]
        with tf.train.MonitoredTrainingSession(checkpoint_dir=checkpoint_dir,
                                               hooks=hooks) as sess:
            while not sess.should_stop():
                sess.run(train, {keys: KEYS, y: TARGETS})
            return sess.run(rows, {keys: probe})


def test_a_table_checkpoints_restores_exports_and_serves(tmp_path):
    probe = np.stack([np.unique(KEYS), np.unique(KEYS)], axis=1)
    straight = _steps(str(tmp_path / "straight"), 6, probe)
    first = _steps(str(tmp_path / "resumed"), 4, probe)
    model = tf.load_model(str(tmp_path / "resumed" / "model.npz"))
    assert sorted(model["emb/keys"].tolist()) == sorted(np.unique(KEYS).tolist())
    np.testing.assert_array_equal(tf.lookup(model, "emb", probe), first)
    np.testing.assert_array_equal(tf.lookup(str(tmp_path / "resumed"), "emb", [[1, 2]]),
                                  np.zeros((1, 2, 3)))  # unknown keys: zeros
    with pytest.raises(tf.errors.NotFoundError, match="'user'.*emb"):
        tf.lookup(model, "user", [1])
    # resuming brings back the rows and Adam's moments: two more steps as if never stopped
    resumed = _steps(str(tmp_path / "resumed"), 6, probe)
    np.testing.assert_allclose(resumed, straight, rtol=1e-6)
    assert not np.allclose(resumed, first)


def test_a_checkpoint_with_another_table_dimension_is_refused(tmp_path):
    probe = np.stack([np.unique(KEYS), np.unique(KEYS)], axis=1)
    _steps(str(tmp_path), 2, probe)
    with tf.Graph().as_default():
        table = tf.get_embedding_variable("emb", embedding_dim=5)
        loss = tf.reduce_sum(tf.nn.embedding_lookup(table, tf.constant([1])))
        tf.train.GradientDescentOptimizer(0.1).minimize(
            loss, global_step=tf.train.get_or_create_global_step())
        with pytest.raises(tf.errors.DataLossError, match="'emb'.*dimension 3.*5"):
            tf.train.MonitoredTrainingSession(checkpoint_dir=str(tmp_path))
