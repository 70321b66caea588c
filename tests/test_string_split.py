"""strings.split and string_split: tokens, positions and dense shape written out by hand as
Python's split gives them, a split field feeding a categorical column (and exported with it),
and the errors."""

import numpy as np
import pytest

import psflow as tf
from psflow.fingerprint import fingerprint64

LINES = np.array(["a b  c", "", "x,,y", " q"])


@pytest.fixture(autouse=True)
def graph():
    with tf.Graph().as_default() as g:
        yield g


def split_values(sparse, x, lines=LINES):
    with tf.Session() as sess:
        indices, values, shape = sess.run([sparse.indices, sparse.values, sparse.dense_shape],
                                          {x: lines})
    rows = [[] for _ in range(shape[0])]
    for (r, p), v in zip(indices.tolist(), values.tolist(), strict=True):
        assert p == len(rows[r])  # positions run 0, 1, ... within a row
        rows[r].append(v.decode())
    assert shape[1] == max(map(len, rows))
    return rows


@pytest.mark.parametrize("make,want", [
    (lambda x: tf.strings.split(x), [["a", "b", "c"], [], ["x,,y"], ["q"]]),
    (lambda x: tf.strings.split(x, sep=","), [["a b  c"], [""], ["x", "", "y"], [" q"]]),
    (lambda x: tf.strings.split(source=x, sep=",", maxsplit=1),
     [["a b  c"], [""], ["x", ",y"], [" q"]]),
    (lambda x: tf.string_split(x), [["a", "b", "c"], [], ["x,,y"], ["q"]]),
    (lambda x: tf.string_split(x, delimiter=", "), [["a", "b", "c"], [], ["x", "y"], ["q"]]),
    (lambda x: tf.string_split(x, delimiter=",", skip_empty=False),
     [["a b  c"], [""], ["x", "", "y"], [" q"]]),
    (lambda x: tf.string_split(x, delimiter=""),
     [list("a b  c"), [], list("x,,y"), list(" q")]),
])
def test_split_gives_python_s_tokens(make, want):
    x = tf.placeholder(tf.string, (None,))
    assert split_values(make(x), x) == want


def test_split_tags_feed_a_categorical_column_and_export(tmp_path):
    fc = tf.feature_column
    line = tf.placeholder(tf.string, (None,), name="tags")
    tags = fc.categorical_column_with_hash_bucket("tags", 5)
    out = fc.input_layer({"tags": tf.strings.split(line, sep="|")},
                         [fc.indicator_column(tags)])
    rows = np.array(["red|blue", "", "blue|blue|green"])
    with tf.Session() as sess:
        got = sess.run(out, {line: rows})
        tf.saved_model.simple_save(sess, str(tmp_path / "1"), inputs={"tags": line},
                                   outputs={"y": out})
    want = np.zeros((3, 5), np.float32)
    for r, text in enumerate(rows):
        for tag in text.split("|"):  # "" is one empty tag, as TensorFlow splits it
            want[r, int(fingerprint64(np.array([tag], "S"))[0].astype(np.uint64) % 5)] += 1
    assert np.array_equal(got, want)
    served = tf.saved_model.Predictor.load(str(tmp_path / "1")).predict({"tags": rows})
    assert np.array_equal(served["y"], want)


def test_split_errors_name_the_problem():
    x = tf.placeholder(tf.string, (None,))
    with pytest.raises(ValueError, match="no RaggedTensor"):
        tf.strings.split(x, result_type="RaggedTensor")
    with pytest.raises(ValueError, match="exactly one of input and source"):
        tf.strings.split(x, source=x)
    with pytest.raises(ValueError, match="sep must not be empty"):
        tf.strings.split(x, sep="")
    with pytest.raises(TypeError, match="input must be strings, got float32"):
        tf.strings.split(tf.placeholder(tf.float32, (None,)))
    with pytest.raises(ValueError, match="rank 1, got shape"):
        tf.string_split(tf.placeholder(tf.string, (None, 2)))
    with pytest.raises(ValueError, match="sep or delimiter, not both"):
        tf.string_split(x, sep=",", delimiter=";")
    with pytest.raises(TypeError, match="delimiter must be a string"):
        tf.string_split(x, delimiter=3)
