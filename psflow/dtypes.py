"""Dtypes: numpy dtypes under TensorFlow's names, and `as_dtype`, which accepts either."""

import numpy as np

float16 = np.dtype(np.float16)
float32 = np.dtype(np.float32)
float64 = np.dtype(np.float64)
int32 = np.dtype(np.int32)
int64 = np.dtype(np.int64)
bool_ = np.dtype(np.bool_)
# Byte strings, as TensorFlow's tf.string: numpy's fixed-width bytes (an array is S<width>),
# compact and without a Python object per value.
string = np.dtype("S")


_TF_DTYPE_NAMES = {"float": "float32", "double": "float64", "half": "float16", "string": "S"}


def as_dtype(dtype):
    """Returns `dtype` as a numpy dtype; accepts numpy dtypes, their names and Python types."""
    if dtype is float:
        return float32
    if dtype is int:
        return int32
    if isinstance(dtype, str) and dtype in _TF_DTYPE_NAMES:  # TF's names, not numpy's
        return np.dtype(_TF_DTYPE_NAMES[dtype])
    try:
        return np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"{dtype!r} is not a dtype") from exc
