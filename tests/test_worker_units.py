"""Worker-side pieces that need no server: cluster config, placement, data shards, and
MonitoredTrainingSession training locally when no cluster is configured."""

import json

import numpy as np
import pytest

import psflow as tf
from psflow.train.cluster import ClusterSpec, task_config_from_env
from psflow.worker.data import shard
from psflow.worker.placement import Placement


@pytest.fixture(autouse=True)
def fresh_graph():
    with tf.Graph().as_default() as graph:
        yield graph


def _tf_config(ps=2, workers=3, index=1, task_type="worker"):
    return json.dumps({"cluster": {"ps": [f"127.0.0.1:{5000 + i}" for i in range(ps)],
                                   "worker": [f"127.0.0.1:{6000 + i}" for i in range(workers)]},
                       "task": {"type": task_type, "index": index}})


def test_tf_config_is_read_as_tensorflow_writes_it():
    task = task_config_from_env({"TF_CONFIG": _tf_config(index=2)})
    assert task.ps_addresses == ["127.0.0.1:5000", "127.0.0.1:5001"]
    assert (task.num_workers, task.worker_index, task.is_chief) == (3, 2, False)
    assert task_config_from_env({"TF_CONFIG": _tf_config(index=0)}).is_chief
    assert task_config_from_env({}) is None


def test_a_tfjob_chief_counts_as_worker_zero():
    config = {"cluster": {"chief": ["c:1"], "worker": ["w:1", "w:2"], "ps": ["p:1"]},
              "task": {"type": "worker", "index": 1}}
    task = task_config_from_env({"TF_CONFIG": json.dumps(config)})
    assert (task.num_workers, task.worker_index, task.is_chief) == (3, 2, False)
    config["task"] = {"type": "chief", "index": 0}
    assert task_config_from_env({"TF_CONFIG": json.dumps(config)}).is_chief


@pytest.mark.parametrize("raw,message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"cluster": {"ps": ["a:1"]}, "task": {"type": "worker", "index": 0}}),
     "task type 'worker'"),
    (_tf_config(index=7), "task index 7"),
])
def test_malformed_tf_config_says_what_is_wrong(raw, message):
    with pytest.raises(ValueError, match=message):
        task_config_from_env({"TF_CONFIG": raw})


def test_cluster_spec_lists_jobs_and_refuses_bad_input():
    spec = ClusterSpec({"ps": ["a:1", "b:2"], "worker": ["c:3"]})
    assert spec.num_tasks("ps") == 2 and spec.task_address("worker", 0) == "c:3"
    assert ClusterSpec(spec.as_dict()) == spec
    with pytest.raises(ValueError, match="no task 5"):
        spec.task_address("ps", 5)
    with pytest.raises(ValueError, match="as strings"):
        ClusterSpec({"ps": [1234]})


def test_placement_is_greedy_by_size_and_deterministic():
    sizes = [(1000, 10), (10, 10), (500, 10), (400, 10), (5, 5)]
    variables = [tf.Variable(np.zeros(s, dtype=np.float32), name=f"v{i}")
                 for i, s in enumerate(sizes)]
    first = Placement(variables, 2)
    again = Placement(variables, 2)
    shards = {v.name: first.parts_of(v)[0].shard for v in variables}
    assert shards == {v.name: again.parts_of(v)[0].shard for v in variables}
    # largest first, each to the least-loaded shard: v0 (40000 bytes) -> 0, v2 (20000) -> 1,
    # v3 (16000) -> 1, then v1 (400) and v4 (100) -> 1, still the lighter one.
    assert shards == {"v0": 0, "v1": 1, "v2": 1, "v3": 1, "v4": 1}
    assert first.loads == [40000, 36500]


def test_large_variables_are_split_row_wise_within_the_part_limit():
    big = tf.Variable(tf.zeros((1000, 300)), name="big")  # 1.2 MB
    small = tf.Variable(tf.zeros((3,)), name="small")
    placement = Placement([big, small], 3, partition_bytes=256 * 1024)
    parts = placement.parts_of(big)
    assert len(parts) >= 5
    assert all(p.nbytes <= 256 * 1024 for p in parts)
    assert parts[0].start == 0 and parts[-1].stop == 1000
    assert all(a.stop == b.start for a, b in zip(parts[:-1], parts[1:], strict=True))
    assert {p.shard for p in parts} == {0, 1, 2}
    assert [p.name for p in parts[:2]] == ["big/part_0", "big/part_1"]
    assert len(placement.parts_of(small)) == 1


def test_a_variable_over_the_limit_gets_a_part_on_every_shard():
    var = tf.Variable(tf.zeros((10, 4)), name="w")
    placement = Placement([var], 2, partition_bytes=100)  # 160 bytes, 16 per row
    parts = placement.parts_of(var)
    assert len(parts) == 2 and sorted(p.shard for p in parts) == [0, 1]


def test_a_row_larger_than_the_part_limit_is_refused():
    var = tf.Variable(tf.zeros((2, 1000)), name="wide_rows")
    with pytest.raises(ValueError, match="one row is 4000 bytes"):
        Placement([var], 1, partition_bytes=1000)


def test_data_shards_are_disjoint_and_cover_everything():
    x = np.arange(10)
    y = np.arange(10) * 10
    pieces = [shard(x, y, num_shards=3, index=i) for i in range(3)]
    assert sorted(np.concatenate([p[0] for p in pieces]).tolist()) == list(range(10))
    for px, py in pieces:
        assert (py == px * 10).all()
    with pytest.raises(ValueError, match="out of range"):
        shard(x, num_shards=2, index=2)
    with pytest.raises(ValueError, match="different lengths"):
        shard(x, y[:3], num_shards=2, index=0)


def test_data_shard_defaults_to_this_worker(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", _tf_config(workers=4, index=1))
    assert shard(np.arange(8)).tolist() == [1, 5]
    monkeypatch.delenv("TF_CONFIG")
    assert shard(np.arange(3)).tolist() == [0, 1, 2]


def test_monitored_session_trains_locally_and_stops_at_the_last_step(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    w = tf.Variable(np.zeros(2))
    loss = tf.reduce_sum(tf.square(w - np.array([1.0, -1.0])))
    step = tf.train.get_or_create_global_step()
    train = tf.train.GradientDescentOptimizer(0.1).minimize(loss, global_step=step)
    runs = 0
    with tf.train.MonitoredTrainingSession(
            hooks=[tf.train.StopAtStepHook(last_step=25)]) as sess:
        while not sess.should_stop():
            sess.run(train)
            runs += 1
        final = sess.run(w)
    assert runs == 25
    np.testing.assert_allclose(final, [1 - 0.8 ** 25, -(1 - 0.8 ** 25)])


def test_stop_at_step_hook_needs_one_bound():
    with pytest.raises(ValueError, match="exactly one"):
        tf.train.StopAtStepHook()


def test_hooks_see_their_fetches_and_can_stop():
    counter = tf.Variable(0.0)
    bump = counter.assign_add(1.0)

    class StopAtThree(tf.train.SessionRunHook):
        def __init__(self):
            self.seen = []

        def before_run(self, run_context):
            return tf.train.SessionRunArgs(counter)

        def after_run(self, run_context, run_values):
            self.seen.append(float(run_values.results))
            if run_values.results >= 3:
                run_context.request_stop()

    hook = StopAtThree()
    with tf.train.MonitoredTrainingSession(hooks=[hook]) as sess:
        while not sess.should_stop():
            sess.run(bump)
    assert hook.seen[-1] == 3.0 and len(hook.seen) == 3
