"""Splitting strings into tokens, as TF1's `strings.split` and `string_split`: a batch of
strings (rank 1) becomes a SparseTensor of shape (batch, most tokens in a row) whose row r
holds string r's tokens in order. A categorical column takes it as it is (a multi-valued
field: tags, a query's words). Splitting is Python's bytes.split over the batch, one call per
string: a batch of a few thousand short strings takes a millisecond."""

import re

import numpy as np

from .dtypes import int64, string
from .fingerprint import as_bytes_array
from .graph import Node, convert_to_tensor
from .sparse_ops import SparseTensor


class _Tokens(Node):
    """A batch of strings split once: (tokens per string, the tokens in order), read by the
    three _SplitPart nodes of the SparseTensor."""

    def __init__(self, x, sep, maxsplit, delimiters, skip_empty):
        # sep and delimiters are str (a servable stores str, not bytes), split as UTF-8
        self.sep, self.maxsplit = sep, maxsplit
        self.delimiters, self.skip_empty = delimiters, skip_empty
        super().__init__((x,), name="StringSplit")

    def tokens(self, text):
        if self.delimiters == "":
            parts = [text[i:i + 1] for i in range(len(text))]
        elif self.delimiters is not None:
            parts = re.split(b"[" + re.escape(self.delimiters.encode()) + b"]", text)
        else:
            parts = text.split(None if self.sep is None else self.sep.encode(), self.maxsplit)
        return [p for p in parts if p] if self.skip_empty else parts

    def forward(self, x):
        x = as_bytes_array(np.asarray(x))
        if x.ndim != 1:
            raise ValueError(f"strings.split: input must be a batch of strings of rank 1, got "
                             f"shape {x.shape}")
        split = [self.tokens(bytes(s)) for s in x]
        counts = np.fromiter(map(len, split), np.int64, len(split))
        flat = [t for row in split for t in row]
        return counts, (np.array(flat, dtype="S") if flat else np.zeros(0, "S1"))


class _SplitPart(Node):
    """Part `part` of a split's SparseTensor: its entries' (row, position) (0), their tokens
    (1) or its dense shape (2)."""

    def __init__(self, tokens, part):
        self.part = part
        shape, dtype = [((None, 2), int64), ((None,), string), ((2,), int64)][part]
        super().__init__((tokens,), name="StringSplit", shape=shape, dtype=dtype)

    def forward(self, tokens):
        counts, values = tokens
        if self.part == 1:
            return values
        if self.part == 2:
            return np.array([len(counts), counts.max(initial=0)], np.int64)
        rows = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        positions = np.arange(len(rows), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts,
                                                                      counts)
        return np.stack([rows, positions], axis=1)


def _sparse_split(function, source, sep, maxsplit, delimiters, skip_empty):
    x = convert_to_tensor(source)
    if x.dtype is not None and x.dtype.kind not in "SUO":
        raise TypeError(f"{function}: input must be strings, got {x.dtype.name}")
    if x.shape is not None and len(x.shape) != 1:
        raise ValueError(f"{function}: input must be a batch of strings of rank 1, got shape "
                         f"{x.shape}")
    tokens = _Tokens(x, sep, maxsplit, delimiters, skip_empty)
    return SparseTensor(*(_SplitPart(tokens, k) for k in range(3)))


def _as_text(function, name, value):
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode()
    raise TypeError(f"{function}: {name} must be a string, got {value!r}")


def _sparse_only(function, result_type):
    if result_type != "SparseTensor":
        raise ValueError(f"{function}: result_type must be 'SparseTensor' (psflow has no "
                         f"RaggedTensor), got {result_type!r}")


def split(input=None, sep=None, maxsplit=-1, result_type="SparseTensor", source=None,  # noqa: A002
          name=None):
    """TF1's tf.strings.split: each string's tokens as Python's str.split gives them: with
    `sep` None, split on runs of whitespace, no empty tokens; with `sep`, split on each
    occurrence (empty tokens kept, "" gives one empty token), at most `maxsplit` times."""
    _sparse_only("strings.split", result_type)
    if (input is None) == (source is None):
        raise ValueError("strings.split: give exactly one of input and source")
    sep = None if sep is None else _as_text("strings.split", "sep", sep)
    if sep == "":
        raise ValueError("strings.split: sep must not be empty (None splits on whitespace)")
    return _sparse_split("strings.split", input if source is None else source, sep,
                         int(maxsplit), None, skip_empty=sep is None)


def string_split(source, sep=None, skip_empty=True, delimiter=None,
                 result_type="SparseTensor"):
    """TF1's tf.string_split: each character of `delimiter` (or `sep`, its older name; a
    space by default) splits; empty tokens are left out unless `skip_empty` is False. An
    empty delimiter splits a string into its bytes."""
    _sparse_only("string_split", result_type)
    if sep is not None and delimiter is not None:
        raise ValueError("string_split: give sep or delimiter, not both")
    chars = _as_text("string_split", "delimiter", sep if sep is not None else
                      (delimiter if delimiter is not None else " "))
    return _sparse_split("string_split", source, None, -1, chars, bool(skip_empty))
