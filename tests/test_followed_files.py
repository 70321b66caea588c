"""FollowedFilesDataset: files read as they appear, in name order, temporary names left alone,
each file in one share, waiting for new files until stopped or idle, and the consumed
position that a resumed reader starts after."""

import os
import threading
import time

import numpy as np
import pytest

import psflow as tf
from psflow.data import stream_state
from psflow.data.followed_files import position_of, shard_of_file
from psflow.data.line_origins import Origin


@pytest.fixture(autouse=True)
def fresh_stream_state():
    stream_state.reset()
    yield
    stream_state.reset()


def ship(directory, name, lines):
    """Writes a file as a log shipper does: under a temporary name, renamed in."""
    tmp = os.path.join(directory, f".{name}.tmp")
    with open(tmp, "w") as f:
        f.write("".join(f"{line}\n" for line in lines))
    os.rename(tmp, os.path.join(directory, name))


def read_all(dataset, limit=None):
    """The elements of `dataset` as Python values, through a one-shot iterator, until its
    end (or `limit` elements)."""
    element = dataset.make_one_shot_iterator().get_next()
    out = []
    with tf.Session() as sess:
        while limit is None or len(out) < limit:
            try:
                value = sess.run(element)
            except tf.errors.OutOfRangeError:
                break
            out.append(value.tolist() if hasattr(value, "tolist") else value)
    return out


def test_reads_files_in_name_order_and_ignores_temporary_names(tmp_path):
    ship(tmp_path, "b-002.csv", ["b1", "b2"])
    ship(tmp_path, "a-001.csv", ["a1"])
    (tmp_path / "c-003.csv.tmp").write_text("partial\n")
    (tmp_path / ".d-004.csv").write_text("hidden\n")
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / "e-005.txt").write_text("other pattern\n")
    ds = tf.data.experimental.follow_files(str(tmp_path), "*.csv", idle_timeout=0.3,
                                           poll_interval=0.05)
    assert read_all(ds) == [b"a1", b"b1", b"b2"]


@pytest.mark.cluster  # a concurrency or timing run
def test_files_appearing_while_reading_are_read_and_late_names_skipped(tmp_path):
    ship(tmp_path, "f-001", ["1", "2"])
    ds = tf.data.FollowedFilesDataset(str(tmp_path), idle_timeout=1.5, poll_interval=0.05)

    def writer():
        time.sleep(0.4)
        ship(tmp_path, "f-002", ["3"])
        time.sleep(0.3)
        ship(tmp_path, "f-000", ["late"])  # sorts before what was read: skipped
        ship(tmp_path, "f-003", ["4", "5"])
    thread = threading.Thread(target=writer)
    thread.start()
    started = time.monotonic()
    got = read_all(ds)
    thread.join()
    assert got == [b"1", b"2", b"3", b"4", b"5"]
    assert time.monotonic() - started >= 0.7 + 1.5 - 0.2  # waited for the files, then idle


def test_map_and_batch_work_as_on_text_lines(tmp_path):
    ship(tmp_path, "p-1.csv", ["1,10", "2,20", "3,30"])
    ship(tmp_path, "p-2.csv", ["4,40", "5,50"])
    ds = tf.data.FollowedFilesDataset(str(tmp_path), max_files=2).map(
        lambda line: tf.decode_csv(line, [[0], [0]])).batch(2)
    batches = read_all(ds)
    assert [b[0].tolist() for b in batches] == [[1, 2], [3, 4], [5]]
    assert [b[1].tolist() for b in batches] == [[10, 20], [30, 40], [50]]


def test_shards_split_the_files_disjointly_by_name(tmp_path):
    names = [f"part-{k:05d}" for k in range(12)]
    for k, name in enumerate(names):
        ship(tmp_path, name, [str(k)])
    shares = []
    for index in range(3):
        ds = tf.data.FollowedFilesDataset(str(tmp_path), num_shards=3, index=index,
                                          idle_timeout=0.1, poll_interval=0.05)
        shares.append(sorted(int(x) for x in read_all(ds)))
    assert sorted(sum(shares, [])) == list(range(12))
    assert all(shares)  # names that differ in a digit spread over every shard
    for index, share in enumerate(shares):
        assert share == [k for k, n in enumerate(names) if shard_of_file(n, 3) == index]


def test_defaults_to_the_workers_share_from_tf_config(tmp_path, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"ps": ["a:1"], "worker": ["b:1", "c:1", '
                                    '"d:1"]}, "task": {"type": "worker", "index": 2}}')
    ds = tf.data.FollowedFilesDataset(str(tmp_path))
    assert (ds.num_shards, ds.index) == (3, 2)


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(tf.errors.NotFoundError, match="not a directory"):
        tf.data.FollowedFilesDataset(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="idle_timeout"):
        tf.data.FollowedFilesDataset(str(tmp_path), idle_timeout=0)
    with pytest.raises(ValueError, match="num_shards and index"):
        tf.data.FollowedFilesDataset(str(tmp_path), num_shards=2)
    with pytest.raises(ValueError, match="out of range"):
        tf.data.FollowedFilesDataset(str(tmp_path), num_shards=2, index=2)
    with pytest.raises(ValueError, match="max_files"):
        tf.data.FollowedFilesDataset(str(tmp_path), max_files=0)


def test_the_consumed_position_follows_the_elements_handed_over(tmp_path):
    ship(tmp_path, "x-1", [str(k) for k in range(5)])
    ship(tmp_path, "x-2", [str(k) for k in range(5, 8)])
    ds = tf.data.FollowedFilesDataset(str(tmp_path), name="clicks").batch(3)
    assert read_all(ds, limit=2) == [[b"0", b"1", b"2"], [b"3", b"4", b"5"]]
    _, positions = stream_state.consumed()
    # read ahead further than that, but only what the steps got counts
    assert positions == [("clicks", 0, 1, "x-2", 1)]


def test_a_resumed_reader_starts_after_its_position(tmp_path):
    ship(tmp_path, "x-1", ["a", "b"])
    ship(tmp_path, "x-2", ["c", "d", "e"])
    ship(tmp_path, "x-3", ["f"])
    stream_state.resume_from([("clicks", 0, 1, "x-2", 1)])
    ds = tf.data.FollowedFilesDataset(str(tmp_path), name="clicks", idle_timeout=0.1,
                                      poll_interval=0.05)
    assert read_all(ds) == [b"d", b"e", b"f"]
    stream_state.reset()
    stream_state.resume_from([("clicks", 0, 2, "x-2", 1)])
    ds = tf.data.FollowedFilesDataset(str(tmp_path), name="clicks", idle_timeout=0.1)
    with pytest.raises(tf.errors.FailedPreconditionError, match=r"\[2\] shards.*among 1"):
        read_all(ds)


@pytest.mark.cluster  # a concurrency or timing run
def test_a_stop_request_ends_a_waiting_reader(tmp_path):
    ship(tmp_path, "x-1", ["a"])
    ds = tf.data.FollowedFilesDataset(str(tmp_path), poll_interval=0.05)
    threading.Timer(0.5, stream_state.request_stop).start()
    started = time.monotonic()
    assert read_all(ds) == [b"a"]
    assert time.monotonic() - started < 3.0


def test_position_of_an_element_spanning_files():
    first = Origin(("/d/x-1",), [0, 0], [4, 5])
    second = Origin(("/d/x-2",), [0], [1])
    merged = Origin.concatenate([first, second])
    assert merged.files == ("/d/x-1", "/d/x-2") and merged.describe(2) == "/d/x-2:1"
    assert position_of(merged) == ("x-2", 1)
    assert position_of(Origin.concatenate([second.take(np.array([0])), first])) == ("x-2", 1)
    assert position_of(None) is None


def count_lines_model(directory, **kwargs):
    """A model whose step subtracts 1 from row `id` of `counts` per id line of its batch."""
    ids = tf.data.FollowedFilesDataset(str(directory), poll_interval=0.05, **kwargs).map(
        lambda line: tf.decode_csv(line, [[0]])[0]).batch(2)
    batch = ids.make_one_shot_iterator().get_next()
    counts = tf.Variable(np.zeros(10, np.float32), name="counts")
    step = tf.train.get_or_create_global_step()
    train = tf.train.GradientDescentOptimizer(1.0).minimize(
        tf.reduce_sum(tf.gather(counts, batch)), global_step=step)
    return counts, train


def test_a_local_checkpoint_keeps_the_position_and_a_resumed_job_reads_the_rest(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    ship(data, "x-1", ["0", "1", "2"])
    ship(data, "x-2", ["3", "4", "5"])
    with tf.Graph().as_default():
        counts, train = count_lines_model(data)
        with tf.train.MonitoredTrainingSession(checkpoint_dir=str(tmp_path / "ckpt")) as sess:
            sess.run(train)
            sess.run(train)  # ids 0 to 3; the rest was read ahead, not trained on
    stream_state.reset()  # a new process
    ship(data, "x-3", ["6"])
    with tf.Graph().as_default():
        counts, train = count_lines_model(data, idle_timeout=0.3)
        with tf.train.MonitoredTrainingSession(checkpoint_dir=str(tmp_path / "ckpt")) as sess:
            while not sess.should_stop():
                sess.run(train)  # ends with the dataset's idle timeout, and a final save
    final = tf.load_model(str(tmp_path / "ckpt" / "model.npz"))["counts"]
    np.testing.assert_array_equal(final, [-1] * 7 + [0] * 3)
