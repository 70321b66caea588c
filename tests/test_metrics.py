import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import psflow as tf


@pytest.fixture(autouse=True)
def fresh_graph():
    tf.reset_default_graph()


def _batches(seed, n_batches=4, size=250):
    rng = np.random.default_rng(seed)
    for _ in range(n_batches):
        labels = rng.integers(0, 2, size)
        scores = 1 / (1 + np.exp(-(labels * 1.2 + rng.normal(size=size))))
        yield labels, scores


def test_auc_streams_over_batches_and_matches_the_exact_area():
    labels = tf.placeholder(tf.int64, (None,))
    scores = tf.placeholder(tf.float32, (None,))
    value, update = tf.metrics.auc(labels, scores, num_thresholds=2000)
    all_labels, all_scores = [], []
    with tf.Session() as sess:
        sess.run(tf.local_variables_initializer())
        assert sess.run(value) == 0.0
        for y, p in _batches(0):
            running = sess.run(update, {labels: y, scores: p})
            all_labels.append(y)
            all_scores.append(p)
            exact = roc_auc_score(np.concatenate(all_labels), np.concatenate(all_scores))
            assert abs(running - exact) < 2e-3
        assert sess.run(value) == pytest.approx(running)
        # re-initializing the local variables starts the metric over
        sess.run(tf.local_variables_initializer())
        assert sess.run(value) == 0.0


def test_auc_takes_weights_and_the_pr_curve():
    labels = tf.constant([1, 0, 1, 0, 1])
    scores = tf.constant([0.9, 0.1, 0.8, 0.3, 0.2], dtype=tf.float32)
    separated = tf.constant([0.9, 0.1, 0.8, 0.3, 0.7], dtype=tf.float32)
    weights = tf.constant([1.0, 1.0, 1.0, 1.0, 0.0])
    roc, roc_update = tf.metrics.auc(labels, scores, weights=weights)
    unweighted, unweighted_update = tf.metrics.auc(labels, scores, num_thresholds=1000)
    pr, pr_update = tf.metrics.auc(labels, scores, curve="PR", num_thresholds=1000)
    pr_best, pr_best_update = tf.metrics.auc(labels, separated, curve="PR",
                                             num_thresholds=1000)
    with tf.Session() as sess:
        sess.run(tf.local_variables_initializer())
        sess.run([roc_update, unweighted_update, pr_update, pr_best_update])
        assert sess.run(roc) == pytest.approx(1.0, abs=1e-3)  # the one mistake weighs 0
        assert sess.run(unweighted) == pytest.approx(
            roc_auc_score([1, 0, 1, 0, 1], [0.9, 0.1, 0.8, 0.3, 0.2]), abs=1e-3)
        assert 0.5 < sess.run(pr) < sess.run(pr_best) <= 1.0


def test_mean_and_accuracy_are_exact():
    x = tf.placeholder(tf.float32, (None,))
    mean, mean_update = tf.metrics.mean(x)
    labels = tf.placeholder(tf.int64, (None,))
    predictions = tf.placeholder(tf.int64, (None,))
    acc, acc_update = tf.metrics.accuracy(labels, predictions)
    with tf.Session() as sess:
        sess.run(tf.local_variables_initializer())
        assert sess.run([mean, acc]) == [0.0, 0.0]  # nothing added yet
        sess.run(mean_update, {x: [1.0, 2.0]})
        assert sess.run(mean_update, {x: [6.0]}) == pytest.approx(3.0)
        sess.run(acc_update, {labels: [1, 2, 3], predictions: [1, 0, 3]})
        sess.run(acc_update, {labels: [4], predictions: [4]})
        assert sess.run(acc) == pytest.approx(0.75)


def test_metric_counts_are_local_variables():
    value, update = tf.metrics.auc(tf.constant([1, 0]), tf.constant([0.7, 0.2]))
    assert tf.global_variables() == [] and tf.trainable_variables() == []
    assert [v.name for v in tf.local_variables()] == ["auc/confusion_counts"]
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())  # does not set the local ones
        with pytest.raises(tf.errors.FailedPreconditionError, match="confusion_counts"):
            sess.run(value)


def test_monitored_session_initializes_local_variables():
    value, update = tf.metrics.mean(tf.constant([2.0, 4.0]))
    tf.train.get_or_create_global_step()
    with tf.train.MonitoredTrainingSession() as sess:
        assert sess.run(update) == pytest.approx(3.0)


def test_metric_inputs_are_checked():
    with pytest.raises(ValueError, match="curve"):
        tf.metrics.auc([1], [0.5], curve="LIFT")
    with pytest.raises(ValueError, match="num_thresholds"):
        tf.metrics.auc([1], [0.5], num_thresholds=1)
    value, update = tf.metrics.auc(tf.constant([1, 0]), tf.constant([1.5, 0.2]))
    with tf.Session() as sess:
        sess.run(tf.local_variables_initializer())
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[0, 1\].*1\.5"):
            sess.run(update)
