"""Parsing delimited text records into typed columns with numpy over the bytes.

A batch of records (an `S` array) is viewed as a byte matrix, one row per record; the
delimiters are found, counted and located in one pass, and every numeric field of every record
is read by digit arithmetic over that matrix, so a batch costs a few dozen numpy calls however
many records it holds (numpy runs them in C, without the GIL on large arrays). String fields
come out as fixed-width `S` arrays. What the vectorized path does not read (quoted fields,
numbers that are not plain integers, integers of more than 18 digits) is read with numpy's own
string-to-number conversion or, for quoted records, Python's csv module, record by record.

Every record is checked: a wrong number of fields, a number that is not one, an empty field
with no default, is reported with the record's place, never turned into a default or zero.
"""

import csv

import numpy as np

_POW10 = 10 ** np.arange(19, dtype=np.int64)
_INT_BOUNDS = {np.dtype(np.int32): (-(2 ** 31), 2 ** 31 - 1),
               np.dtype(np.int64): (-(2 ** 63), 2 ** 63 - 1)}
_MAX_DIGITS = 18  # wider integers overflow int64 digit arithmetic: read one by one
_PAD = 32
_FEW_RECORDS = 4


class Column:
    """A column's dtype (float32, float64, int32, int64 or S) and its default for an empty
    field (None: the field is required)."""

    __slots__ = ("dtype", "default")

    def __init__(self, dtype, default):
        self.dtype = np.dtype(dtype)
        self.default = default


class BadRecord(Exception):
    """Record `row` of the batch is malformed; `what` says how."""

    def __init__(self, row, what):
        super().__init__(what)
        self.row, self.what = row, what


def parse(records, columns, delim=b",", use_quote_delim=True, na_value=b"",
          select_cols=None):
    """Parses a 1-D `S` array of records into one array per selected column.

    Returns (arrays, bad) where `bad` is a list of BadRecord for the malformed records (the
    arrays hold whatever those rows parsed to: drop them, or report the first).
    """
    n = records.shape[0]
    total = len(columns) if select_cols is None else max(select_cols) + 1
    wanted = list(range(total)) if select_cols is None else list(select_cols)
    if n == 0:
        return [np.empty(0, dtype=c.dtype if c.dtype.kind != "S" else "S1")
                for c in columns], []
    if n <= _FEW_RECORDS:  # a record or a few: field by field costs less than numpy's calls
        return _finish(records, np.empty(0, dtype=np.int64), {}, range(n), {}, columns,
                       wanted, delim, use_quote_delim, na_value, total)
    records = np.ascontiguousarray(records)
    width = records.dtype.itemsize
    matrix = records.view(np.uint8).reshape(n, width)
    lengths = np.char.str_len(records).astype(np.int64)
    delimiters = matrix == delim[0]
    counts = np.count_nonzero(delimiters, axis=1)
    slow = np.zeros(n, dtype=bool)
    if use_quote_delim:
        slow = (matrix == ord('"')).any(axis=1)
    bad = {}
    # With select_cols, a record may have more fields than the last selected one.
    wrong = (counts != total - 1) & ~slow
    if select_cols is not None:
        wrong &= counts < total - 1
        slow |= (counts > total - 1)
    for row in np.flatnonzero(wrong):
        bad[int(row)] = f"expected {total} fields but have {int(counts[row]) + 1}"
    fast = np.flatnonzero(~wrong & ~slow)
    fast_all = fast.size == n
    out = {}
    if fast.size:
        sub = delimiters if fast_all else delimiters[fast]
        positions = np.flatnonzero(sub).reshape(fast.size, total - 1)
        positions -= (np.arange(fast.size) * width)[:, None]
        starts = np.empty((fast.size, total), dtype=np.int64)
        ends = np.empty_like(starts)
        starts[:, 0] = 0
        starts[:, 1:] = positions + 1
        ends[:, :-1] = positions
        ends[:, -1] = lengths if fast_all else lengths[fast]
        # Padded, so a window of up to two rows' width before or after any field stays inside.
        flat = np.zeros(_PAD + n * width + 2 * width + _PAD, dtype=np.uint8)
        flat[_PAD:_PAD + n * width] = matrix.reshape(-1)
        # Field-major, so each column's fields are contiguous.
        block = _Block(flat, (_PAD + fast * width)[None, :], np.ascontiguousarray(starts.T),
                       np.ascontiguousarray((ends - starts).T), fast, bad, na_value)
        numeric = [(i, c) for i, c in zip(wanted, columns, strict=True) if c.dtype.kind != "S"]
        strings = [(i, c) for i, c in zip(wanted, columns, strict=True) if c.dtype.kind == "S"]
        if numeric:
            out.update(block.numbers(numeric))
        if strings:
            out.update(block.strings(strings))
    return _finish(records, fast, out, np.flatnonzero(slow), bad, columns, wanted, delim,
                   use_quote_delim, na_value, total)


def _finish(records, fast, out, slow_rows, bad, columns, wanted, delim, use_quote_delim,
            na_value, total):
    """The columns of all records: the rows `fast` read vectorized (`out`), `slow_rows` read
    here one by one."""
    slow_values = {}
    for row in slow_rows:
        row = int(row)
        try:
            slow_values[row] = _parse_one(records[row], columns, wanted, delim,
                                          use_quote_delim, na_value, total)
        except BadRecord as exc:
            bad[row] = exc.what
    if not fast.size and len(slow_values) == len(records):  # all read here: no merging
        rows = [slow_values[row] for row in range(len(records))]
        arrays = [np.array([r[k] for r in rows], dtype=column.dtype if column.dtype.kind != "S"
                           else "S") for k, column in enumerate(columns)]
    else:
        arrays = [_assemble(len(records), fast, out.get(index), slow_values, k, column)
                  for k, (index, column) in enumerate(zip(wanted, columns, strict=True))]
    return arrays, [BadRecord(row, what) for row, what in sorted(bad.items())]


class _Block:
    """The fields of the records read on the vectorized path: `starts` and `widths` are
    (fields, records) positions within each record's row of the byte matrix `flat`, whose
    rows begin at `base` (1, records)."""

    def __init__(self, flat, base, starts, widths, rows, bad, na_value):
        self.flat, self.base, self.starts, self.widths = flat, base, starts, widths
        self.rows, self.bad, self.na_value = rows, bad, na_value

    def _empty(self, indices):
        widths = self.widths[indices]
        empty = widths == 0
        if self.na_value:
            empty |= _equals(self.flat, self.base, self.starts[indices], widths,
                             self.na_value)
        return empty

    def _text(self, k, index):
        start = self.base[0, k] + self.starts[index, k]
        return self.flat[start:start + self.widths[index, k]].tobytes()

    def _reject(self, ks, index, column):
        for k in ks:
            self.bad.setdefault(int(self.rows[k]), f"field {index} is not a valid "
                                f"{column.dtype.name}: {self._text(k, index)!r}")

    def strings(self, columns):
        """{index: S array} of string columns, gathered a group of similar widths at once."""
        indices = [i for i, _ in columns]
        longest = self.widths[indices].max(axis=1)
        spans = 1 << np.ceil(np.log2(np.maximum(longest, 1))).astype(np.int64)
        empty = self._empty(indices)
        out = {}
        for span in np.unique(spans):
            group = [k for k in range(len(indices)) if spans[k] == span]
            cols = [indices[k] for k in group]
            data = _field_bytes(self.flat, self.base, self.starts[cols], self.widths[cols],
                                int(span), empty[group])
            texts = data.view(f"S{int(span)}")[..., 0]
            for k, j in zip(group, range(len(group)), strict=True):
                index, column = columns[k]
                values = texts[j]
                if empty[k].any():
                    values = _with_default(values, empty[k], column, index, self.rows,
                                           self.bad)
                out[index] = values
        return out

    def numbers(self, columns):
        """{index: array} of numeric columns, their plain integers read all at once."""
        indices = [i for i, _ in columns]
        empty = self._empty(indices)
        values, not_plain = _integers(self.flat, self.base, self.starts[indices],
                                      self.widths[indices], empty)
        out = {}
        for k, (index, column) in enumerate(columns):
            got, others = values[k], np.flatnonzero(not_plain[k])
            if column.dtype.kind == "f":
                got = got.astype(column.dtype)
                if others.size:
                    self._floats(got, others, index, column)
            else:
                low, high = _INT_BOUNDS[column.dtype]
                for j in others:
                    text = self._text(j, index)
                    try:
                        number = int(text)
                        if number < low or number > high or b"_" in text:
                            raise ValueError(text)
                        got[j] = number
                    except ValueError:
                        self._reject([j], index, column)
                if column.dtype.itemsize < 8:
                    self._reject(np.flatnonzero((got < low) | (got > high)), index, column)
                got = got.astype(column.dtype)
            if empty[k].any():
                got = _with_default(got, empty[k], column, index, self.rows, self.bad)
            out[index] = got
        return out

    def _floats(self, got, others, index, column):
        raw = _field_bytes(self.flat, self.base[0, others], self.starts[index, others],
                           self.widths[index, others], int(self.widths[index, others].max()))
        try:  # numpy's C conversion for all of them; one by one only to find a bad one
            if (raw == ord("_")).any():
                raise ValueError("_")
            got[others] = raw.view(f"S{raw.shape[1]}")[:, 0].astype(np.float64)
        except ValueError:
            for j in others:
                try:
                    got[j] = _float(self._text(j, index))
                except ValueError:
                    self._reject([j], index, column)


def _integers(flat, base, starts, widths, empty):
    """(int64 values of the fields that are plain integers, mask of the other non-empty
    fields), the sign included: digit arithmetic over the fields' bytes, right-aligned."""
    longest = int(widths.max()) if widths.size else 0
    if longest == 0:
        return np.zeros(widths.shape, dtype=np.int64), np.zeros(widths.shape, dtype=bool)
    span = min(longest, _MAX_DIGITS + 1)
    # The `span` bytes that end where each field ends; those before its start are not its.
    raw = _windows(flat, span)[np.ascontiguousarray(base + starts + widths - span)]
    digits = raw.view(np.uint8).reshape(widths.shape + (span,)) - np.uint8(ord("0"))
    digits *= _right_masks(span)[np.minimum(widths, span)]
    first = flat[base + starts]
    signed = ((first == ord("-")) | (first == ord("+"))) & (widths > 1)
    if signed.any():  # the sign's own position is not a digit
        where = np.nonzero(signed)
        digits[where + (span - widths[where],)] = 0
    # A count of the bytes that are not digits (a short last axis: a product, not a reduction)
    others = (digits > 9).view(np.uint8) @ np.ones(span, dtype=np.uint8)
    plain = (others == 0) & (widths - signed <= _MAX_DIGITS) & ~empty
    if span <= 9:
        values = (digits.astype(np.int32) @ _POW10[span - 1::-1].astype(np.int32)).astype(
            np.int64)
    else:
        values = digits.astype(np.int64) @ _POW10[span - 1::-1]
    values[first == ord("-")] *= -1
    values *= plain
    return values, ~plain & ~empty


_MASKS = {}


def _right_masks(span):
    """(span + 1, span) uint8: row w keeps the last w of `span` bytes."""
    if ("right", span) not in _MASKS:
        _MASKS["right", span] = (np.arange(span) >= span - np.arange(span + 1)[:, None]).astype(
            np.uint8)
    return _MASKS["right", span]


def _left_masks(span):
    """(span + 1, span) uint8: row w keeps the first w of `span` bytes."""
    if ("left", span) not in _MASKS:
        _MASKS["left", span] = (np.arange(span) < np.arange(span + 1)[:, None]).astype(np.uint8)
    return _MASKS["left", span]


def _windows(flat, span):
    """Every `span` bytes of `flat` as one `S<span>` item, item i starting at byte i: a
    view, so gathering fields copies `span` bytes per index, not one index per byte."""
    return np.ndarray((flat.size - span + 1,), dtype=f"S{span}", buffer=flat, strides=(1,))


def _field_bytes(flat, base, starts, widths, span, replaced=None):
    """The fields at `starts` (any shape; `base` broadcasts to it) as bytes with one more
    axis of `span`, left-aligned and NUL-padded (but for fields marked `replaced`, whose bytes
    the caller overwrites)."""
    data = _windows(flat, span)[np.ascontiguousarray(base + starts)].view(np.uint8)
    data = data.reshape(np.shape(starts) + (span,))
    short = widths < span
    if replaced is not None:
        short &= ~replaced
    if short.any():
        data *= _left_masks(span)[np.minimum(widths, span)]
    return data


def _equals(flat, base, starts, widths, text):
    same = widths == len(text)
    if same.any():
        got = _field_bytes(flat, base, starts, widths, len(text))
        same &= (got == np.frombuffer(text, dtype=np.uint8)).all(axis=-1)
    return same


def _field_text(flat, base, start, width):
    return flat[base + start:base + start + width].tobytes()


def _float(text):
    if b"_" in text:  # Python's float() reads 1_000; strtod, as TensorFlow does, does not
        raise ValueError(text)
    return float(text)


def _with_default(values, empty, column, index, rows, bad):
    if column.default is None:
        for k in np.flatnonzero(empty):
            bad.setdefault(int(rows[k]), f"field {index} is required but missing")
        return values
    if column.dtype.kind == "S":
        default = np.array(column.default, dtype="S")
        if default.dtype.itemsize > values.dtype.itemsize:
            values = values.astype(default.dtype)
    values[empty] = column.default
    return values


def _parse_one(record, columns, wanted, delim, use_quote_delim, na_value, total):
    """One record, field by field: [value of each wanted column]."""
    try:
        text = bytes(record).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRecord(0, f"not UTF-8 text ({exc.reason})") from None
    if use_quote_delim and '"' in text:
        try:
            fields = next(csv.reader([text], delimiter=delim.decode(), quotechar='"',
                                     strict=True), [""])
        except csv.Error as exc:
            raise BadRecord(0, f"badly quoted: {exc}") from None
    else:
        fields = text.split(delim.decode())
    if len(fields) < total or (len(fields) != total and wanted == list(range(total))):
        raise BadRecord(0, f"expected {total} fields but have {len(fields)}")
    values = []
    for index, column in zip(wanted, columns, strict=True):
        field = fields[index].encode()
        if field == b"" or (na_value and field == na_value):
            if column.default is None:
                raise BadRecord(0, f"field {index} is required but missing")
            values.append(column.default)
            continue
        if column.dtype.kind == "S":
            values.append(field)
            continue
        try:
            number = _float(field) if column.dtype.kind == "f" else int(field)
        except ValueError:
            raise BadRecord(0, f"field {index} is not a valid {column.dtype.name}: "
                               f"{field!r}") from None
        if column.dtype.kind == "i":
            low, high = _INT_BOUNDS[column.dtype]
            if number < low or number > high or b"_" in field:
                raise BadRecord(0, f"field {index} is not a valid {column.dtype.name}: "
                                   f"{field!r}")
        values.append(number)
    return values


def _assemble(n, fast, fast_values, slow_values, k, column):
    """One column of all n records from the vectorized rows and the rows read one by one."""
    if not slow_values and fast_values is not None and fast.size == n:
        return fast_values
    dtype = column.dtype
    if dtype.kind == "S":
        width = max([fast_values.dtype.itemsize if fast_values is not None else 1] +
                    [len(v[k]) for v in slow_values.values()])
        dtype = np.dtype(f"S{width}")
    result = np.zeros(n, dtype=dtype)
    if fast_values is not None:
        result[fast] = fast_values
    for row, values in slow_values.items():
        result[row] = values[k]
    return result


def strings_at(buffer, starts, widths):
    """The byte ranges [starts, starts + widths) of `buffer` (a uint8 array) as an `S`
    array as wide as the longest."""
    span = max(int(widths.max()), 1) if widths.size else 1
    flat = np.zeros(buffer.size + span, dtype=np.uint8)
    flat[:buffer.size] = buffer
    return _field_bytes(flat, 0, starts, widths, span).view(f"S{span}")[:, 0]
