"""tf.data: each dataset's elements against the Python/numpy expectation, iterators and
OutOfRangeError as TF1 loops use them, and a model trained from a TextLineDataset."""

import gzip
import json
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

import psflow as tf
from psflow.data.dataset_ops import CHUNK_ROWS


def elements(dataset):
    """Every element of `dataset`, read through a one-shot iterator in a Session."""
    next_element = dataset.make_one_shot_iterator().get_next()
    out = []
    with tf.Session() as sess:
        while True:
            try:
                out.append(sess.run(next_element))
            except tf.errors.OutOfRangeError:
                return out


def identity_map(dataset):
    """The same dataset, but element by element (a map's output is not sliced from arrays)."""
    return dataset.map(lambda x: tf.identity(x))


def test_from_tensor_slices_of_a_tensor_a_tuple_and_a_dict():
    assert [int(x) for x in elements(tf.data.Dataset.from_tensor_slices(np.arange(5)))] == \
        list(range(5))
    pairs = elements(tf.data.Dataset.from_tensor_slices((np.arange(3), [[1.0, 2.0]] * 3)))
    assert [(int(a), b.tolist()) for a, b in pairs] == [(0, [1, 2]), (1, [1, 2]), (2, [1, 2])]
    records = elements(tf.data.Dataset.from_tensor_slices(
        {"id": np.array([7, 8]), "name": ["a", "bc"]}))
    assert [(int(r["id"]), r["name"]) for r in records] == [(7, b"a"), (8, b"bc")]
    ds = tf.data.Dataset.from_tensor_slices({"x": np.zeros((4, 3), np.float32), "y": [1, 2, 3, 4]})
    assert ds.output_types == {"x": np.float32, "y": np.int32}
    assert ds.output_shapes == {"x": (3,), "y": ()}


def test_one_run_gives_every_tensor_of_get_next_the_same_element():
    ds = tf.data.Dataset.from_tensor_slices({"a": np.arange(6), "b": np.arange(6) * 10})
    it = ds.shuffle(6, seed=3).make_one_shot_iterator()
    element = it.get_next()
    total = element["a"] * 10 + element["b"]
    with tf.Session() as sess:
        for _ in range(6):
            a, b, t = sess.run([element["a"], element["b"], total])
            assert b == 10 * a and t == 20 * a


# Sliced from arrays (batches cut from chunks, across chunk boundaries) or element by element.
@pytest.mark.parametrize("sliced,size,batch,drop", [
    (sliced, 10, 3, drop) for sliced in (True, False) for drop in (False, True)] + [
    (True, 9, 3, False), (False, 9, 3, False),
    (True, 2 * CHUNK_ROWS + 7, 3000, False), (True, 2 * CHUNK_ROWS + 7, 3000, True)])
def test_batch_and_its_remainder(sliced, size, batch, drop):
    ds = tf.data.Dataset.from_tensor_slices(np.arange(size))
    if not sliced:
        ds = identity_map(ds)
    got = [b.tolist() for b in elements(ds.batch(batch, drop_remainder=drop))]
    full = size // batch * batch
    want = [list(range(i, min(i + batch, size))) for i in range(0, size if not drop else full,
                                                                batch)]
    assert got == want
    assert ds.batch(batch, drop).output_shapes == ((batch if drop else None),)


def test_shuffle_is_a_permutation_reproducible_with_a_seed():
    data = np.arange(100)
    first = [int(x) for x in elements(tf.data.Dataset.from_tensor_slices(data).shuffle(
        20, seed=7))]
    again = [int(x) for x in elements(tf.data.Dataset.from_tensor_slices(data).shuffle(
        20, seed=7))]
    other = [int(x) for x in elements(tf.data.Dataset.from_tensor_slices(data).shuffle(
        20, seed=8))]
    assert sorted(first) == list(range(100)) and first != list(range(100))
    assert first == again and first != other
    # A buffer of 20 moves no element more than 20 places earlier than it was.
    assert all(first.index(x) >= x - 20 for x in range(100))
    epochs = [int(x) for x in elements(tf.data.Dataset.from_tensor_slices(data).shuffle(
        100, seed=7).repeat(2))]
    assert sorted(epochs[:100]) == sorted(epochs[100:]) == list(range(100))
    assert epochs[:100] != epochs[100:]  # reshuffled each iteration


@pytest.mark.parametrize("sliced", [True, False])
def test_repeat(sliced):
    ds = tf.data.Dataset.from_tensor_slices(np.arange(3))
    if not sliced:
        ds = identity_map(ds)
    assert [int(x) for x in elements(ds.repeat(3))] == [0, 1, 2] * 3
    assert elements(ds.repeat(0)) == []
    forever = ds.repeat().make_one_shot_iterator().get_next()
    with tf.Session() as sess:
        assert [int(sess.run(forever)) for _ in range(10)] == [0, 1, 2] * 3 + [0]


@pytest.mark.parametrize("sliced", [True, False])
def test_shards_are_disjoint_and_complete(sliced):
    ds = tf.data.Dataset.from_tensor_slices(np.arange(CHUNK_ROWS + 50 if sliced else 50))
    if not sliced:
        ds = identity_map(ds)
    shards = [[int(x) for x in b] for index in range(3)
              for b in [np.concatenate(elements(ds.shard(3, index).batch(1000)))]]
    for index, shard in enumerate(shards):
        assert shard == list(range(index, len(shard) * 3 + index, 3))[:len(shard)]
    together = sorted(x for shard in shards for x in shard)
    assert together == list(range(CHUNK_ROWS + 50 if sliced else 50))
    with pytest.raises(ValueError, match="index 3 is out of range for 3 shards"):
        ds.shard(3, 3)


TEXT = b"first line\nsecond\r\n\nfourth, with a comma\nlast without newline"
LINES = [b"first line", b"second", b"", b"fourth, with a comma", b"last without newline"]


@pytest.mark.parametrize("compression", [None, "GZIP", "ZLIB"])
def test_text_lines_plain_and_compressed(tmp_path, compression):
    writers = {None: lambda b: b, "GZIP": gzip.compress, "ZLIB": zlib.compress}
    names = []
    for k in range(2):
        path = tmp_path / f"part-{k}.txt"
        path.write_bytes(writers[compression](TEXT + (b"\n" if k else b"")))
        names.append(str(path))
    got = elements(tf.data.TextLineDataset(names, compression_type=compression))
    assert got == LINES * 2
    batches = elements(tf.data.TextLineDataset(names, compression_type=compression).batch(3))
    assert [b.tolist() for b in batches] == [LINES[:3], LINES[3:] + LINES[:1], LINES[1:4],
                                             LINES[4:]]


def test_text_lines_across_blocks_keep_their_line_numbers(tmp_path, monkeypatch):
    from psflow.data import text_lines
    monkeypatch.setattr(text_lines, "BLOCK_BYTES", 7)
    path = tmp_path / "lines.txt"
    lines = [f"w {i if i != 2 else 'two'} " + "x" * (i % 13 + 1) for i in range(200)]
    path.write_text("\n".join(lines) + "\n")
    got = elements(tf.data.TextLineDataset(str(path)).batch(32))
    assert [x.decode() for b in got for x in b] == lines
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"lines.txt:3: field 1 is not a valid int32: b'two'"):
        elements(tf.data.TextLineDataset(str(path)).batch(32).map(
            lambda s: tf.decode_csv(s, [[""], [0], [""]], field_delim=" ")))


def test_a_missing_file_and_a_bad_compression_are_named(tmp_path):
    with pytest.raises(tf.errors.NotFoundError, match="nowhere.txt: no such file"):
        elements(tf.data.TextLineDataset(str(tmp_path / "nowhere.txt")))
    path = tmp_path / "plain.txt"
    path.write_bytes(TEXT)
    with pytest.raises(tf.errors.NotFoundError, match="plain.txt: cannot read it as GZIP"):
        elements(tf.data.TextLineDataset(str(path), compression_type="GZIP"))
    with pytest.raises(ValueError, match="compression_type must be"):
        tf.data.TextLineDataset(str(path), compression_type="LZ4")


def test_out_of_range_at_the_end_and_after():
    next_element = tf.data.Dataset.from_tensor_slices([1, 2]).make_one_shot_iterator().get_next()
    with tf.Session() as sess:
        assert [sess.run(next_element), sess.run(next_element)] == [1, 2]
        for _ in range(2):
            with pytest.raises(tf.errors.OutOfRangeError, match="End of sequence"):
                sess.run(next_element)


def test_an_initializable_iterator_restarts_with_new_feeds():
    data = tf.placeholder(tf.float32, (None,))
    it = tf.data.Dataset.from_tensor_slices(data).batch(2).make_initializable_iterator()
    batch = it.get_next()
    with tf.Session() as sess:
        with pytest.raises(tf.errors.FailedPreconditionError, match="not been initialized"):
            sess.run(batch)
        sess.run(it.initializer, {data: [1.0, 2.0, 3.0]})
        assert sess.run(batch).tolist() == [1.0, 2.0]
        sess.run(it.initializer, {data: [5.0, 6.0, 7.0, 8.0]})  # mid-way: starts over
        assert [sess.run(batch).tolist() for _ in range(2)] == [[5.0, 6.0], [7.0, 8.0]]
        with pytest.raises(tf.errors.OutOfRangeError):
            sess.run(batch)
        sess.run(it.initializer, {data: [9.0]})
        assert sess.run(batch).tolist() == [9.0]
    with pytest.raises(ValueError, match="use make_initializable_iterator"):
        tf.data.Dataset.from_tensor_slices(data).make_one_shot_iterator()


def test_tf1_spellings_of_iterators():
    ds = tf.data.Dataset.from_tensor_slices(np.arange(3))
    for make in (tf.data.make_one_shot_iterator, tf.compat.v1.data.make_one_shot_iterator):
        assert [int(x) for x in _drain(make(ds).get_next())] == [0, 1, 2]
    it = tf.compat.v1.data.make_initializable_iterator(ds)
    with tf.Session() as sess:
        sess.run(it.initializer)
        assert sess.run(it.get_next()) == 0
    with pytest.raises(AttributeError, match="psflow does not implement tf.data.TFRecordDataset"):
        _ = tf.data.TFRecordDataset


def _drain(tensor):
    out = []
    with tf.Session() as sess:
        while True:
            try:
                out.append(sess.run(tensor))
            except tf.errors.OutOfRangeError:
                return out


def test_prefetch_keeps_elements_ready_ahead_of_the_step():
    ds = tf.data.Dataset.from_tensor_slices(np.arange(20)).map(lambda x: x * 2).prefetch(5)
    it = ds.make_one_shot_iterator()
    x = it.get_next()
    with tf.Session() as sess:
        assert sess.run(x) == 0
        deadline = time.monotonic() + 5
        while it._ahead._queue.qsize() < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert it._ahead._queue.qsize() == 5
        assert [int(sess.run(x)) for _ in range(19)] == list(range(2, 40, 2))


def test_a_map_function_cannot_use_the_enclosing_graph_s_tensors():
    outside = tf.constant(3)
    with pytest.raises(tf.errors.GraphMismatchError, match="make them inside the function"):
        tf.data.Dataset.from_tensor_slices(np.arange(3, dtype=np.int32)).map(
            lambda x: x + outside)


def test_monitored_training_session_stops_cleanly_at_the_end_of_the_input():
    x = tf.data.Dataset.from_tensor_slices(np.ones((10, 1), np.float32)).batch(4) \
        .make_one_shot_iterator().get_next()
    w = tf.Variable(tf.zeros((1, 1)))
    loss = tf.reduce_mean(tf.square(tf.matmul(x, w) - 1.0))
    step = tf.train.get_or_create_global_step()
    train = tf.train.GradientDescentOptimizer(0.1).minimize(loss, global_step=step)
    runs = 0
    with tf.train.MonitoredTrainingSession() as sess:
        while not sess.should_stop():
            sess.run(train)
            runs += 1
    assert runs == 3  # batches of 4, 4 and 2; the fourth run ended the loop


def test_a_small_model_trains_from_a_text_file(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(600, 2)).astype(np.float32)
    targets = features @ np.array([2.0, -3.0], np.float32) + 1.0
    path = tmp_path / "train.csv"
    path.write_text("".join(f"{t:.6f},{a:.6f},{b:.6f}\n"
                            for t, (a, b) in zip(targets, features, strict=True)))

    def parse(lines):
        target, a, b = tf.decode_csv(lines, [[0.0], [0.0], [0.0]])
        return tf.stack([a, b], axis=1), tf.reshape(target, (-1, 1))

    ds = tf.data.TextLineDataset(str(path)).batch(50).map(parse).repeat(20).prefetch(2)
    inputs, labels = ds.make_one_shot_iterator().get_next()
    w = tf.Variable(tf.zeros((2, 1)))
    bias = tf.Variable(tf.zeros((1,)))
    loss = tf.reduce_mean(tf.square(tf.matmul(inputs, w) + bias - labels))
    train = tf.train.GradientDescentOptimizer(0.1).minimize(loss)
    steps = 0
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        while True:
            try:
                _, last = sess.run([train, loss])
                steps += 1
            except tf.errors.OutOfRangeError:
                break
        weights, b = sess.run([w, bias])
    assert steps == 240  # 12 batches a pass, 20 passes
    np.testing.assert_allclose(weights.ravel(), [2.0, -3.0], atol=1e-3)
    np.testing.assert_allclose(b, [1.0], atol=1e-3)
    assert last < 1e-6


def test_a_file_pipeline_reads_ahead_in_a_process_that_ends_with_its_data(tmp_path):
    path = tmp_path / "numbers.txt"
    path.write_text("".join(f"{i}\n" for i in range(100)))
    it = tf.data.TextLineDataset(str(path)).batch(10).make_initializable_iterator()
    batch = it.get_next()
    with tf.Session() as sess:
        sess.run(it.initializer)
        first = it._ahead
        assert sess.run(batch).tolist() == [str(i).encode() for i in range(10)]
        sess.run(it.initializer)  # starting over stops the first reader
        assert not first._process.is_alive()
        batches = [sess.run(batch) for _ in range(10)]
        assert [int(x) for b in batches for x in b] == list(range(100))
        with pytest.raises(tf.errors.OutOfRangeError):
            sess.run(batch)
        it._ahead._process.join(timeout=5)
        assert it._ahead._process.exitcode == 0


TRAINER = '''
import json, sys
import psflow as tf
from psflow.train.cluster import task_config_from_env

task = task_config_from_env()
shards, index = (task.num_workers, task.worker_index) if task else (1, 0)


def parse(lines):
    target, a, b = tf.decode_csv(lines, [[0.0], [0.0], [0.0]])
    return tf.stack([a, b], axis=1), tf.reshape(target, (-1, 1))


dataset = tf.data.TextLineDataset(sys.argv[1]).shard(shards, index).batch(25).map(parse)
x, y = dataset.repeat(40).make_one_shot_iterator().get_next()
w = tf.Variable(tf.zeros((2, 1)), name="w")
b = tf.Variable(tf.zeros((1,)), name="b")
loss = tf.reduce_mean(tf.square(tf.matmul(x, w) + b - y))
step = tf.train.get_or_create_global_step()
train = tf.train.GradientDescentOptimizer(0.05).minimize(loss, global_step=step)
runs = 0
with tf.train.MonitoredTrainingSession() as sess:
    while not sess.should_stop():
        _, final_w, final_b = sess.run([train, w, b])
        runs += 1
with open(sys.argv[2] + f".{index}", "w") as out:
    json.dump({"w": final_w.ravel().tolist(), "b": final_b.tolist(), "runs": runs}, out)
'''


@pytest.mark.cluster
def test_two_workers_train_from_their_shards_of_a_file_until_it_ends(tmp_path):
    rng = np.random.default_rng(1)
    features = rng.normal(size=(400, 2))
    targets = features @ np.array([2.0, -3.0]) + 1.0
    data = tmp_path / "train.csv"
    data.write_text("".join(f"{t:.6f},{a:.6f},{b:.6f}\n"
                            for t, (a, b) in zip(targets, features, strict=True)))
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    out = tmp_path / "result"
    result = subprocess.run([sys.executable, "-m", "psflow.launcher", "--no-progress",
                             "--workers", "2", "--ps", "1", str(script), str(data), str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for index in range(2):
        final = json.loads((tmp_path / f"result.{index}").read_text())
        assert final["runs"] == 8 * 40  # 200 lines a shard in batches of 25, 40 passes
        np.testing.assert_allclose(final["w"], [2.0, -3.0], atol=1e-2)
        np.testing.assert_allclose(final["b"], [1.0], atol=1e-2)


def test_file_names_fed_to_an_initializable_iterator(tmp_path):
    for name, text in (("a.txt", b"1\n2\n"), ("b.txt", b"3\n")):
        (tmp_path / name).write_bytes(text)
    files = tf.placeholder(tf.string, (None,))
    it = tf.data.TextLineDataset(files).make_initializable_iterator()
    line = it.get_next()
    with tf.Session() as sess:
        for names, want in (([tmp_path / "a.txt"], [b"1", b"2"]),
                            ([tmp_path / "b.txt", tmp_path / "a.txt"], [b"3", b"1", b"2"])):
            sess.run(it.initializer, {files: [str(n).encode() for n in names]})
            got = []
            while True:
                try:
                    got.append(sess.run(line))
                except tf.errors.OutOfRangeError:
                    break
            assert got == want


@pytest.mark.parametrize("count", [-1, 0, 3, 9, 10, 25])
def test_take_and_skip_cut_the_elements_as_list_slices(count):
    values = list(range(25))

    def read(dataset):
        out = []
        with tf.Graph().as_default():
            element = dataset().make_one_shot_iterator().get_next()
            with tf.Session() as sess:
                while True:
                    try:
                        out.append(sess.run(element).tolist())
                    except tf.errors.OutOfRangeError:
                        return out

    n = len(values) if count == -1 else count
    for batched in (False, True):  # chunks of rows, then element by element
        def slices(batched=batched):
            dataset = tf.data.Dataset.from_tensor_slices(np.array(values))
            return dataset.batch(1) if batched else dataset
        taken = read(lambda slices=slices: slices().take(count))
        skipped = read(lambda slices=slices: slices().skip(count))
        assert np.ravel(taken).tolist() == values[:n]
        assert np.ravel(skipped).tolist() == values[n:]
    with pytest.raises(ValueError, match="count must be -1 or >= 0, got -2"):
        tf.data.Dataset.from_tensor_slices(np.array(values)).take(-2)
