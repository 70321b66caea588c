"""FarmHash Fingerprint64 over byte-string arrays, FingerprintCat64, and the string ops."""

import numpy as np
import pytest

import psflow as tf
from psflow.errors import InvalidArgumentError
from psflow.fingerprint import fingerprint64, fingerprint_cat64

# Fingerprint64 of each string, as FarmHash's reference C++ (farmhashna::Hash64) gives it:
# one string of each length class (0, 1-3, 4-7, 8-16, 17-32, 33-64, over 64 bytes).
REFERENCE = {
    b"": 11160318154034397263,
    b"a": 12917804110809363939,
    b"abc": 2640714258260161385,
    b"hello": 13009744463427800296,
    b"68fd1e64": 7920289447977470598,
    b"TensorFlow": 4265654129848386254,
    b"x" * 20: 8233088228747857348,
    b"y" * 40: 276292113409495006,
    b"z" * 100: 9220849947163966073,
}


def test_reference_values_of_every_length_class():
    strings = np.array(list(REFERENCE), dtype="S")
    assert fingerprint64(strings).tolist() == list(REFERENCE.values())
    # the same strings one by one, each in an array of its own width
    for text, value in REFERENCE.items():
        assert int(fingerprint64(np.array([text]))[0]) == value


def test_every_length_against_the_c_implementation():
    farmhash = pytest.importorskip("farmhash")  # the cityhash package's FarmHash binding
    rng = np.random.default_rng(7)
    strings = [bytes(rng.integers(1, 256, n, dtype=np.uint8)) for n in range(300)] * 2
    strings += [bytes(rng.integers(1, 256, rng.integers(0, 300), dtype=np.uint8))
                for _ in range(500)]
    want = [farmhash.Fingerprint64(s) for s in strings]
    assert fingerprint64(np.array(strings, dtype="S")).tolist() == want
    short = [s for s in strings if len(s) <= 16]  # the narrow-array path
    assert fingerprint64(np.array(short, dtype="S")).tolist() == \
        [farmhash.Fingerprint64(s) for s in short]


def test_shape_str_and_object_arrays_hash_as_their_utf8_bytes():
    words = [["héllo", "a"], ["", "TensorFlow"]]
    as_bytes = np.array([[w.encode() for w in row] for row in words])
    want = fingerprint64(as_bytes)
    assert want.shape == (2, 2) and want.dtype == np.uint64
    assert np.array_equal(fingerprint64(np.array(words)), want)
    assert np.array_equal(fingerprint64(np.array(words, dtype=object)), want)
    assert want[1, 1] == REFERENCE[b"TensorFlow"]
    with pytest.raises(TypeError, match="expected an array of strings"):
        fingerprint64(np.array([1, 2]))


def test_fingerprint_cat64_as_tensorflow_writes_it():
    mul = 0xC6A4A7935BD1E995
    mask = 2**64 - 1

    def shift_mix(v):
        return v ^ (v >> 47)

    def cat(fp1, fp2):  # tensorflow/core/platform/fingerprint.h, in Python integers
        result = fp1 ^ mul
        result ^= (shift_mix((fp2 * mul) & mask) * mul) & mask
        result = (result * mul) & mask
        result = (shift_mix(result) * mul) & mask
        return shift_mix(result)

    pairs = [(0, 0), (0xDECAFCAFFE, 7), (2**64 - 1, 12345678901234567), (3, 2**63)]
    got = fingerprint_cat64(np.array([p[0] for p in pairs], np.uint64),
                            np.array([p[1] for p in pairs], np.uint64))
    assert got.tolist() == [cat(a, b) for a, b in pairs]


def test_string_to_hash_bucket_fast_matches_tensorflow_documented_example():
    # tf.strings.to_hash_bucket_fast(["Hello", "TensorFlow", "2.x"], 3) -> [0, 2, 2]
    x = tf.placeholder(tf.string, (None,))
    buckets = tf.strings.to_hash_bucket_fast(x, 3)
    same = tf.string_to_hash_bucket_fast(x, 1000)
    with tf.Session() as sess:
        assert sess.run(buckets, {x: ["Hello", "TensorFlow", "2.x"]}).tolist() == [0, 2, 2]
        fed = np.array([b"hello", b"68fd1e64"])
        got = sess.run(same, {x: fed})
    assert got.dtype == np.int64
    assert got.tolist() == [REFERENCE[b"hello"] % 1000, REFERENCE[b"68fd1e64"] % 1000]


def test_as_string_and_the_errors():
    n = tf.placeholder(tf.int64, (None,))
    with tf.Session() as sess:
        assert sess.run(tf.as_string(n), {n: [0, -12, 345]}).tolist() == [b"0", b"-12", b"345"]
    with pytest.raises(ValueError, match="num_buckets must be a positive integer"):
        tf.string_to_hash_bucket_fast(tf.placeholder(tf.string, (None,)), 0)
    with pytest.raises(TypeError, match="must be strings"):
        tf.string_to_hash_bucket_fast(n, 10)
    s = tf.placeholder(tf.string, (None,))
    with tf.Session() as sess, pytest.raises(InvalidArgumentError, match="holds strings"):
        sess.run(tf.string_to_hash_bucket_fast(s, 5), {s: np.array([1.5])})
