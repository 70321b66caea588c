"""String ops: `string_to_hash_bucket_fast` (TF1's name; `strings.to_hash_bucket_fast`) and
`as_string`. Strings are numpy fixed-width byte arrays (`psflow.string`); a str or object
array given to an op is converted to bytes (UTF-8) once. The hash is FarmHash's Fingerprint64
(psflow.fingerprint), the one TensorFlow uses, so a bucket computed by TensorFlow, or by any
FarmHash binding, is the bucket psflow computes. No gradient flows through these ops: their
outputs are integers or strings."""

import numpy as np

from .dtypes import int64, string
from .fingerprint import as_bytes_array, fingerprint64
from .graph import Node, convert_to_tensor


def check_buckets(name, value):
    """`value` as a positive int; ValueError naming the argument otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_string_input(op, tensor):
    if tensor.dtype is not None and tensor.dtype.kind not in "SUO":
        raise TypeError(f"{op}: input {tensor.name!r} must be strings (psflow.string), got "
                        f"{tensor.dtype.name}; use as_string first, or a column of "
                        "dtype int")


class StringToHashBucketFast(Node):
    """Fingerprint64 of each string, modulo `num_buckets`: int64, the input's shape."""

    def __init__(self, input, num_buckets, name=None):  # noqa: A002 -- TF's argument name
        input = convert_to_tensor(input)
        _check_string_input("string_to_hash_bucket_fast", input)
        self.num_buckets = check_buckets("string_to_hash_bucket_fast: num_buckets",
                                         num_buckets)
        super().__init__((input,), name=name or "StringToHashBucketFast", shape=input.shape,
                         dtype=int64)

    def forward(self, strings):
        return (fingerprint64(strings) % np.uint64(self.num_buckets)).astype(np.int64)


class AsString(Node):
    """Integers (or booleans) as their decimal byte strings; strings pass through."""

    def __init__(self, input, name=None):  # noqa: A002 -- TF's argument name
        input = convert_to_tensor(input)
        if input.dtype is not None and input.dtype.kind not in "biuSUO":
            raise TypeError(f"as_string: only integers and strings are supported, "
                            f"{input.name!r} is {input.dtype.name}")
        super().__init__((input,), name=name or "AsString", shape=input.shape, dtype=string)

    def forward(self, values):
        values = np.asarray(values)
        if values.dtype.kind in "SUO":
            return as_bytes_array(values)
        return values.astype(np.int64).astype(np.bytes_)


class KeyFingerprint(Node):
    """Fingerprint64 of each string as int64 (its 64 bits as they are): a hash-keyed
    table's key for the string."""

    def __init__(self, input, name=None):  # noqa: A002 -- TF's argument name
        input = convert_to_tensor(input)
        _check_string_input("KeyFingerprint", input)
        super().__init__((input,), name=name or "KeyFingerprint", shape=input.shape,
                         dtype=int64)

    def forward(self, strings):
        return fingerprint64(strings).view(np.int64)


def string_to_hash_bucket_fast(input, num_buckets, name=None):  # noqa: A002 -- TF's name
    """TF1's tf.string_to_hash_bucket_fast: the bucket of each string, Fingerprint64(s) %
    num_buckets, as int64 of the input's shape."""
    return StringToHashBucketFast(input, num_buckets, name=name)


def as_string(input, name=None):  # noqa: A002 -- TF's argument name
    """TF1's tf.as_string for integers: each value as its decimal byte string."""
    return AsString(input, name=name)
