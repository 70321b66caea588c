"""TF1's `tf.io`: `decode_csv`. Other names are refused by name."""

from .csv_ops import decode_csv
from .unimplemented import refuse as _refuse

__all__ = ["decode_csv"]


def __getattr__(name):
    raise _refuse("tf.io", name)
