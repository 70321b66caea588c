"""`decode_csv` (TF1's `tf.io.decode_csv`, `tf.decode_csv`): delimited text records into one
tensor per column, vectorized over a batch of records (see csv_parse for how)."""

import logging

import numpy as np

from . import csv_parse
from .data.line_origins import SkippedRecord, current
from .dtypes import as_dtype
from .errors import InvalidArgumentError
from .graph import Constant, Node, _default_dtype, convert_to_tensor

log = logging.getLogger(__name__)

_DTYPES = ("float32", "float64", "int32", "int64")
_LOGGED_SKIPS = 10  # malformed lines named one by one in the log; the rest are counted


class DecodeCSV(Node):
    """Parses its records; its value is the tuple of the columns, which `CSVColumn` nodes
    pick. `skipped_lines` counts the malformed records skipped (with `skip_malformed`)."""

    def __init__(self, records, columns, field_delim, use_quote_delim, na_value, select_cols,
                 skip_malformed, name=None):
        self.columns = columns
        self.field_delim, self.use_quote_delim = field_delim, use_quote_delim
        self.na_value, self.select_cols = na_value, select_cols
        self.skip_malformed = skip_malformed
        self.skipped_lines = 0
        self.first_skipped = []  # "where: what" of the first few skipped records
        super().__init__((records,), name=name or "DecodeCSV", shape=records.shape)

    def forward(self, records):
        records = np.asarray(records)
        if records.dtype.kind == "U":
            records = np.char.encode(records, "utf-8")
        if records.dtype.kind != "S":
            raise InvalidArgumentError(f"decode_csv takes string records, got an array of "
                                       f"{records.dtype.name}")
        flat = records.reshape(-1)
        arrays, bad = csv_parse.parse(flat, self.columns, self.field_delim,
                                      self.use_quote_delim, self.na_value, self.select_cols)
        if not bad:
            return tuple(a.reshape(records.shape) for a in arrays)
        origin = current()
        if origin is not None and len(origin) != flat.size:
            origin = None

        def where(row):
            return origin.describe(row) if origin is not None else f"record {row}"

        if not self.skip_malformed:
            more = f" (and {len(bad) - 1} more malformed in this batch)" if len(bad) > 1 else ""
            raise InvalidArgumentError(f"decode_csv: {where(bad[0].row)}: {bad[0].what}{more}")
        for record in bad:
            if self.skipped_lines < _LOGGED_SKIPS:
                self.first_skipped.append(f"{where(record.row)}: {record.what}")
                log.warning("decode_csv skips %s", self.first_skipped[-1])
            self.skipped_lines += 1
        if records.ndim == 0:
            raise SkippedRecord(f"decode_csv skipped {where(0)}: {bad[0].what}")
        keep = np.ones(flat.size, dtype=bool)
        keep[[record.row for record in bad]] = False
        return tuple(a[keep] for a in arrays)


class CSVColumn(Node):
    """Column `index` of a DecodeCSV's records (`.op` is the DecodeCSV, as in TF1)."""

    def __init__(self, decode, index, dtype, name=None):
        self.index = index
        shape = decode.shape if not decode.skip_malformed else (None,)
        super().__init__((decode,), name=name or f"{decode.name}:{index}", shape=shape,
                         dtype=dtype, unique_name=f"{decode.name}:{index}")

    @property
    def op(self):
        return self.inputs[0]

    def forward(self, values):
        return values[self.index]


def decode_csv(records, record_defaults, field_delim=",", use_quote_delim=True, name=None,
               na_value="", select_cols=None, skip_malformed=False):
    """Converts CSV records to tensors, one per column (TF1's `tf.io.decode_csv`).

    `records` is a string tensor of any shape (a batch of lines, or one line); each entry of
    `record_defaults` gives a column's dtype (float32, float64, int32, int64 or string) and
    the value of an empty field: `[0.0]`, `[0]`, `[""]`, `tf.constant([], tf.int64)` (empty:
    the field is required). Returns a list of tensors of the records' shape.

    A malformed record (wrong number of fields, a number that is not one, a required field
    empty) raises InvalidArgumentError naming it: by file and line when the records came from
    a TextLineDataset, else by its index. psflow's `skip_malformed=True` skips such records
    instead (the columns then hold only the well-formed ones, and a skipped single record
    drops its dataset element); each skip is counted in `column.op.skipped_lines`, the first
    few are logged and kept in `column.op.first_skipped`, and a dataset's iterator logs the
    count when it reaches the end.
    """
    records = convert_to_tensor(records)
    if records.dtype is not None and records.dtype.kind not in "SU":
        raise TypeError(f"decode_csv takes string records, got {records.name!r} of dtype "
                        f"{records.dtype.name}")
    if not isinstance(field_delim, (str, bytes)) or len(field_delim) != 1:
        raise ValueError(f"decode_csv: field_delim must be one character, got {field_delim!r}")
    if skip_malformed and records.shape is not None and len(records.shape) > 1:
        raise ValueError("decode_csv: skip_malformed needs records of rank 0 or 1, got shape "
                         f"{records.shape}")
    if not record_defaults:
        raise ValueError("decode_csv: record_defaults must name at least one column")
    columns = [_column(default, k) for k, default in enumerate(record_defaults)]
    if select_cols is not None:
        select_cols = [int(c) for c in select_cols]
        if len(select_cols) != len(columns):
            raise ValueError(f"decode_csv: {len(select_cols)} select_cols but "
                             f"{len(columns)} record_defaults")
        if any(c < 0 for c in select_cols) or select_cols != sorted(set(select_cols)):
            raise ValueError(f"decode_csv: select_cols must be increasing column indices, "
                             f"got {select_cols}")
    decode = DecodeCSV(records, columns, _as_bytes(field_delim), bool(use_quote_delim),
                       _as_bytes(na_value), select_cols, bool(skip_malformed), name=name)
    return [CSVColumn(decode, k, c.dtype if c.dtype.kind != "S" else np.dtype("S"))
            for k, c in enumerate(columns)]


def _column(default, k):
    """The csv_parse.Column of record_defaults[k]."""
    if isinstance(default, Node):
        if not isinstance(default, Constant):
            raise TypeError(f"decode_csv: record_defaults[{k}] must be a constant, got "
                            f"{default.name!r}")
        value = default.value
    elif isinstance(default, np.dtype) or (isinstance(default, type) and default in (
            float, int, bytes, str)):
        return csv_parse.Column(_checked_dtype(as_dtype(default), k), None)
    else:
        value = np.asarray(default)
        if value.dtype.kind == "U":
            value = np.char.encode(value, "utf-8")
        elif value.dtype.kind in "fi" and not isinstance(default, np.ndarray):
            value = value.astype(_default_dtype(default, None))
        if value.size == 0 and value.dtype == np.float64 and not isinstance(default, np.ndarray):
            value = value.astype(np.float32)
    if value.size > 1:
        raise ValueError(f"decode_csv: record_defaults[{k}] must hold one value or none, got "
                         f"{value.size}")
    dtype = _checked_dtype(value.dtype, k)
    if value.size == 0:
        return csv_parse.Column(dtype, None)
    item = value.reshape(-1)[0]
    return csv_parse.Column(dtype, bytes(item) if dtype.kind == "S" else item.item())


def _checked_dtype(dtype, k):
    if dtype.kind == "S" or dtype.name in _DTYPES:
        return np.dtype("S") if dtype.kind == "S" else dtype
    raise TypeError(f"decode_csv: record_defaults[{k}] has dtype {dtype.name}; columns may be "
                    "float32, float64, int32, int64 or string")


def _as_bytes(text):
    return text if isinstance(text, bytes) else text.encode("utf-8")
