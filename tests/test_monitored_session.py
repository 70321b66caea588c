"""MonitoredTrainingSession's TF1 arguments: what a Scaffold does, and what is refused."""


import numpy as np
import pytest

import psflow as tf


@pytest.fixture(autouse=True)
def fresh_graph():
    with tf.Graph().as_default() as graph:
        yield graph


def _model():
    w = tf.Variable(np.zeros(3, np.float32), name="w")
    step = tf.train.get_or_create_global_step()
    return w, step


def test_scaffold_init_op_init_fn_and_local_init_op_run_in_order():
    w, step = _model()
    start = tf.placeholder(tf.float32, (3,), name="start")
    seen = []

    def init_fn(scaffold, session):
        seen.append(("init_fn", session.run(w).tolist()))

    local_init = w.assign_add(np.ones(3, np.float32))
    scaffold = tf.train.Scaffold(init_op=w.assign(start), init_feed_dict={start: [1, 2, 3]},
                                 init_fn=init_fn, local_init_op=local_init)
    with tf.train.MonitoredTrainingSession(scaffold=scaffold) as sess:
        assert sess.run(w).tolist() == [2.0, 3.0, 4.0]
    assert seen == [("init_fn", [1.0, 2.0, 3.0])]


def test_scaffold_init_fn_is_skipped_when_resuming_from_a_checkpoint(tmp_path):
    w, step = _model()
    bump = w.assign(np.full(3, 7, np.float32))
    calls = []
    scaffold = tf.train.Scaffold(init_fn=lambda scaffold, session: calls.append(1))
    with tf.train.MonitoredTrainingSession(checkpoint_dir=str(tmp_path),
                                           scaffold=scaffold) as sess:
        sess.run(bump)
    assert calls == [1]
    with tf.train.MonitoredTrainingSession(checkpoint_dir=str(tmp_path),
                                           scaffold=scaffold) as sess:
        assert sess.run(w).tolist() == [7.0, 7.0, 7.0]
    assert calls == [1]


def test_scaffold_accepts_what_psflow_does_itself_and_refuses_copying():
    scaffold = tf.train.Scaffold(ready_op=tf.no_op(), ready_for_local_init_op=tf.no_op(),
                                 saver=object())
    assert scaffold.summary_op is None
    with pytest.raises(NotImplementedError, match=r"Scaffold\(copy_from_scaffold=...\)"):
        tf.train.Scaffold(copy_from_scaffold=object())


def test_unknown_arguments_are_refused():
    _model()
    with pytest.raises(TypeError, match="save_everything"):
        tf.train.MonitoredTrainingSession(save_everything=True)
    with tf.train.MonitoredTrainingSession(save_summaries_steps=100, config=object(),
                                           log_step_count_steps=10):
        pass
    with pytest.raises(TypeError, match="Scaffold"):
        tf.train.MonitoredTrainingSession(scaffold=object())
