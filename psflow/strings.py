"""`psflow.strings` (TensorFlow's tf.strings): the string ops psflow has."""

from .string_ops import as_string
from .string_ops import string_to_hash_bucket_fast as to_hash_bucket_fast
from .string_split import split
from .unimplemented import refuse as _refuse

__all__ = ["as_string", "split", "to_hash_bucket_fast"]


def __getattr__(name):
    raise _refuse("tf.strings", name)
