"""decode_csv: values and defaults against a plain-Python reading of the same records,
malformed records named (by file and line when they came from a TextLineDataset) or skipped
and counted, never turned into defaults."""

import csv
import logging

import numpy as np
import pytest

import psflow as tf
from psflow.csv_parse import Column, parse


def reference(records, kinds, defaults, delim=","):
    """The columns of `records` read by Python's csv module, field by field."""
    columns = [[] for _ in kinds]
    for record in records:
        fields = next(csv.reader([record.decode()], delimiter=delim))
        assert len(fields) == len(kinds)
        for k, (kind, field) in enumerate(zip(kinds, fields, strict=True)):
            if field == "":
                columns[k].append(defaults[k])
            elif kind == "S":
                columns[k].append(field.encode())
            else:
                columns[k].append(float(field) if kind == "f" else int(field))
    return columns


def run(tensors, feed=None):
    with tf.Session() as sess:
        return sess.run(tensors, feed)


# A few records are read field by field, more with numpy over the whole batch: both ways.
@pytest.mark.parametrize("copies", [1, 5])
def test_values_and_defaults_by_hand(copies):
    records = tf.constant([b"1,2.5,abc,-7", b"3,,x,", b",1e3,hello world,+12",
                           b"-4,-0.25,,0"] * copies)
    a, b, c, d = tf.decode_csv(records, [[9], [-1.0], ["D"], tf.constant([5], tf.int64)])
    got = run([a, b, c, d])
    assert got[0].dtype == np.int32 and got[0].tolist() == [1, 3, 9, -4] * copies
    assert got[1].dtype == np.float32 and got[1].tolist() == [2.5, -1.0, 1000.0, -0.25] * copies
    assert got[2].dtype.kind == "S" and got[2].tolist() == [b"abc", b"x", b"hello world",
                                                            b"D"] * copies
    assert got[3].dtype == np.int64 and got[3].tolist() == [-7, 5, 12, 0] * copies


def test_random_records_match_a_field_by_field_reading():
    rng = np.random.default_rng(3)
    kinds = ["i", "f", "S", "i", "f", "S", "I"]
    defaults = [0, 0.5, b"none", -1, 0.0, b"", 7]
    records = []
    for _ in range(3000):
        fields = []
        for kind in kinds:
            if rng.random() < 0.15:
                fields.append("")
            elif kind in "iI":
                fields.append(str(int(rng.integers(-10 ** 9, 10 ** 9)) // 10 ** int(
                    rng.integers(0, 9))))
            elif kind == "f":
                fields.append(rng.choice([f"{rng.normal() * 100:.4f}", str(int(
                    rng.integers(0, 1000))), f"{rng.normal():.3e}"]))
            else:
                fields.append("".join(rng.choice(list("abcdef0123"), int(rng.integers(1, 12)))))
        records.append(",".join(fields).encode())
    want = reference(records, [k.replace("I", "i") for k in kinds], defaults)
    record_defaults = [[0], [0.5], ["none"], [-1], [0.0], [""], tf.constant([7], tf.int64)]
    got = run(tf.io.decode_csv(tf.constant(records), record_defaults))
    one = tf.placeholder(tf.string, ())
    each = tf.decode_csv(one, record_defaults)
    with tf.Session() as sess:
        singles = [sess.run(each, {one: r}) for r in records[:200]]
    for k, kind in enumerate(kinds):
        if kind == "f":
            np.testing.assert_allclose(got[k], np.float32(want[k]), rtol=1e-6)
            np.testing.assert_allclose([s[k] for s in singles], np.float32(want[k][:200]),
                                       rtol=1e-6)
        else:
            assert got[k].tolist() == want[k], k
            assert [s[k].item() for s in singles] == want[k][:200], k


def test_record_default_dtypes():
    records = tf.placeholder(tf.string, (None,))
    columns = tf.decode_csv(records, [[0], [0.0], [""], np.array([0.0]),
                                      tf.constant([], tf.int64), tf.constant([1], tf.int64)])
    assert [c.dtype for c in columns] == [np.int32, np.float32, np.dtype("S"), np.float64,
                                         np.int64, np.int64]
    got = run(columns, {records: [b"1,2,a,3,4,5"]})
    assert [v.tolist() for v in got] == [[1], [2.0], [b"a"], [3.0], [4], [5]]
    with pytest.raises(TypeError, match=r"record_defaults\[0\] has dtype bool"):
        tf.decode_csv(records, [[True]])
    with pytest.raises(ValueError, match="field_delim must be one character"):
        tf.decode_csv(records, [[0]], field_delim="ab")


def test_quotes_select_cols_and_na_value():
    records = tf.constant([b'"a,b",1,"say ""hi""",2', b"c,NA,d,3"] * 3)
    a, b, c, d = tf.decode_csv(records, [[""], [-1], [""], [0]], na_value="NA")
    assert [v.tolist() for v in run([a, b, c, d])] == [
        [b"a,b", b"c"] * 3, [1, -1] * 3, [b'say "hi"', b"d"] * 3, [2, 3] * 3]
    first, third = tf.decode_csv(tf.constant([b"1,x,3.5,y", b"2,z,4,w", b"3,a,5,b"] * 2),
                                 [[0], [0.0]], select_cols=[0, 2])
    assert [v.tolist() for v in run([first, third])] == [[1, 2, 3] * 2, [3.5, 4.0, 5.0] * 2]


def test_shape_of_records_is_kept():
    records = tf.constant([[b"1,a", b"2,b"], [b"3,c", b"4,d"]])
    numbers, letters = run(tf.decode_csv(records, [[0], [""]]))
    assert numbers.tolist() == [[1, 2], [3, 4]] and letters.tolist() == [[b"a", b"b"],
                                                                         [b"c", b"d"]]
    one = run(tf.decode_csv(tf.constant(b"5,e"), [[0], [""]]))
    assert one[0].shape == () and one[0] == 5 and one[1] == b"e"


@pytest.mark.parametrize("record,what", [
    (b"1,2", "expected 3 fields but have 2"),
    (b"1,2,3,4", "expected 3 fields but have 4"),
    (b"1,x2,3", "field 1 is not a valid float32: b'x2'"),
    (b"1.5,2,3", "field 0 is not a valid int32: b'1.5'"),
    (b"99999999999,2,3", "field 0 is not a valid int32: b'99999999999'"),
    (b"1,2,", "field 2 is required but missing"),
    (b"1,1_0,3", "field 1 is not a valid float32: b'1_0'"),
])
@pytest.mark.parametrize("after", [1, 10])
def test_a_malformed_record_is_named_never_defaulted(record, what, after):
    records = tf.placeholder(tf.string, (None,))
    columns = tf.decode_csv(records, [[0], [0.0], tf.constant([], tf.int64)])
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"record 1: {what}"):
        run(columns, {records: [b"7,8,9", record] + [b"1,2,3"] * after})


def test_parse_reports_every_malformed_record():
    records = np.array([b"1,2", b"x,3", b"4", b"5,6", b"7,"])
    arrays, bad = parse(records, [Column(np.int32, None), Column(np.int32, None)])
    assert [(b.row, b.what) for b in bad] == [
        (1, "field 0 is not a valid int32: b'x'"), (2, "expected 2 fields but have 1"),
        (4, "field 1 is required but missing")]
    assert arrays[0][[0, 3]].tolist() == [1, 5] and arrays[1][[0, 3]].tolist() == [2, 6]


def write(path, text):
    path.write_bytes(text)
    return str(path)


DEFAULTS = [[0], [0.0], [""]]
GOOD_AND_BAD = b"1,0.5,a\n2,0.25,b\n3,oops,c\n4,1.0,d\n5\n6,2.0,f\n" + b"".join(
    b"%d,%d.5,g\n" % (i, i) for i in range(7, 13))


def iterate(tensors):
    out = []
    with tf.Session() as sess:
        while True:
            try:
                out.append(sess.run(tensors))
            except tf.errors.OutOfRangeError:
                return out


@pytest.mark.parametrize("batched", [True, False])
def test_a_malformed_line_is_named_by_file_and_line(tmp_path, batched):
    name = write(tmp_path / "part-0.csv", GOOD_AND_BAD)
    lines = tf.data.TextLineDataset([name])
    if batched:
        ds = lines.batch(8).map(lambda line: tf.decode_csv(line, DEFAULTS))
    else:
        ds = lines.map(lambda line: tf.decode_csv(line, DEFAULTS)).batch(4)
    columns = ds.make_one_shot_iterator().get_next()
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=f"{name}:3: field 1 is not a valid float32: b'oops'"):
        iterate(columns)


@pytest.mark.parametrize("batched", [True, False])
def test_skipped_lines_are_dropped_counted_and_logged(tmp_path, caplog, batched):
    name = write(tmp_path / "part-0.csv", GOOD_AND_BAD)
    lines = tf.data.TextLineDataset(name)
    if batched:
        ds = lines.batch(8).map(lambda line: tf.decode_csv(line, DEFAULTS,
                                                           skip_malformed=True))
    else:
        ds = lines.map(lambda line: tf.decode_csv(line, DEFAULTS, skip_malformed=True))
        ds = ds.batch(4)
    columns = ds.make_one_shot_iterator().get_next()
    with caplog.at_level(logging.WARNING):
        batches = iterate(columns)
    numbers = np.concatenate([b[0] for b in batches]).tolist()
    letters = np.concatenate([b[2] for b in batches]).tolist()
    assert numbers == [1, 2, 4, 6] + list(range(7, 13))
    assert letters == [b"a", b"b", b"d", b"f"] + [b"g"] * 6
    decode = ds._inputs[0] if not batched else ds
    assert decode.function.skipped_lines() == 2
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"{name}:3: field 1 is not a valid float32" in m for m in messages)
    assert any(f"{name}:5: expected 3 fields but have 1" in m for m in messages)
    assert any("skipped 2 malformed lines" in m for m in messages)


def test_criteo_lines_parse_as_the_generator_wrote_them(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(500):
        label = int(rng.integers(0, 2))
        ints = ["" if rng.random() < 0.2 else str(int(rng.integers(0, 5000)))
                for _ in range(13)]
        cats = ["" if rng.random() < 0.1 else f"{int(rng.integers(0, 1 << 32)):08x}"
                for _ in range(26)]
        rows.append((label, ints, cats))
    text = "".join("\t".join([str(r[0])] + r[1] + r[2]) + "\n" for r in rows).encode()
    name = write(tmp_path / "day_0.tsv", text)
    defaults = [[0]] + [[0.0]] * 13 + [[""]] * 26
    ds = tf.data.TextLineDataset(name).batch(128).map(
        lambda line: tf.decode_csv(line, defaults, field_delim="\t"))
    batches = iterate(ds.make_one_shot_iterator().get_next())
    columns = [np.concatenate([b[k] for b in batches]) for k in range(40)]
    assert columns[0].tolist() == [r[0] for r in rows]
    for k in range(13):
        assert columns[1 + k].tolist() == [float(r[1][k] or 0) for r in rows]
    for k in range(26):
        assert columns[14 + k].tolist() == [r[2][k].encode() for r in rows]


def test_skips_are_counted_on_the_op_of_the_columns():
    records = tf.placeholder(tf.string, (None,))
    columns = tf.decode_csv(records, [[0], [""]], skip_malformed=True)
    with tf.Session() as sess:
        numbers, _ = sess.run(columns, {records: [b"1,a", b"2", b"x,b", b"4,d", b"5,e", b"6,f"]})
        assert numbers.tolist() == [1, 4, 5, 6]
        sess.run(columns, {records: [b"7"]})
    assert columns[0].op.skipped_lines == 3 and columns[1].op is columns[0].op
    assert columns[0].op.first_skipped == ["record 1: expected 2 fields but have 1",
                                           "record 2: field 0 is not a valid int32: b'x'",
                                           "record 0: expected 2 fields but have 1"]
    with pytest.raises(ValueError, match="skip_malformed needs records of rank 0 or 1"):
        tf.decode_csv(tf.placeholder(tf.string, (2, 2)), [[0]], skip_malformed=True)
