"""Reading the messages that carry large tensors without copying the tensors.

Protobuf's parser copies every bytes field it reads, and reading the field from Python copies
it again. The few messages whose bulk is tensor bytes (a push's gradients, the values in a
pull's or a push's reply) are walked here instead: the small fields are parsed by protobuf
from their own bytes, and each tensor becomes `np.frombuffer` over the received message at
its offset, checked exactly as codec.decode checks it.
"""

import math

import numpy as np

from . import codec
from . import psflow_pb2 as pb

_INT64 = 1 << 64


class WireError(codec.CodecError):
    """Bytes that are not a well-formed message."""


def _varint(buf, pos, end):
    result = shift = 0
    while True:
        if pos >= end:
            raise WireError("truncated message")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("malformed varint")


def fields(buf, start=0, end=None):
    """Yields (field number, wire type, value, field start, field end) for each field of the
    message in buf[start:end]; value is the integer of a varint, or the (start, end) of a
    length-delimited payload."""
    end = len(buf) if end is None else end
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _varint(buf, pos, end)
        number, kind = key >> 3, key & 7
        if kind == 0:
            value, pos = _varint(buf, pos, end)
        elif kind == 2:
            length, pos = _varint(buf, pos, end)
            value = (pos, pos + length)
            pos += length
        elif kind == 1:
            value, pos = None, pos + 8
        elif kind == 5:
            value, pos = None, pos + 4
        else:
            raise WireError(f"unsupported wire type {kind}")
        if pos > end:
            raise WireError("truncated message")
        yield number, kind, value, field_start, pos


def _int64(value):
    return value - _INT64 if value >= 1 << 63 else value


def tensor(buf, start, end, what="tensor"):
    """The array of the Tensor message in buf[start:end], over `buf` (read-only, no copy)."""
    dtype_name, shape, content = "", [], (start, start)
    for number, kind, value, _, _ in fields(buf, start, end):
        if number == 1 and kind == 2:
            dtype_name = bytes(buf[value[0]:value[1]]).decode("utf-8", "replace")
        elif number == 2 and kind == 2:  # packed
            pos, stop = value
            while pos < stop:
                dim, pos = _varint(buf, pos, stop)
                shape.append(_int64(dim))
        elif number == 2 and kind == 0:
            shape.append(_int64(value))
        elif number == 3 and kind == 2:
            content = value
    dtype = codec.DTYPES.get(dtype_name)
    if dtype is None:
        raise codec.CodecError(f"{what}: unknown dtype {dtype_name!r}; supported: "
                               f"{', '.join(codec.DTYPES)}")
    if any(d < 0 for d in shape):
        raise codec.CodecError(f"{what}: negative dimension in shape {shape}")
    expected = math.prod(shape) * dtype.itemsize
    size = content[1] - content[0]
    if size != expected:
        raise codec.CodecError(f"{what}: {size} bytes do not hold a {dtype_name} array of "
                               f"shape {shape} ({expected} bytes)")
    count = size // dtype.itemsize
    array = np.frombuffer(buf, dtype=dtype, count=count, offset=content[0]).reshape(shape)
    # Arithmetic on misaligned elements is several times slower: such an array is copied.
    return array if array.flags.aligned else array.copy()


class Gradient:
    __slots__ = ("name", "version", "values", "indices")

    def __init__(self, name, version, values, indices):
        self.name, self.version, self.values, self.indices = name, version, values, indices


class Push:
    """A PushRequest read from bytes: its small fields as a PushRequest (`header`, also
    reachable as attributes) and `gradients` [Gradient with numpy arrays]."""

    def __init__(self, data):
        buf = memoryview(data)
        rest, gradients = [], []
        for number, kind, value, start, end in fields(buf):
            if number == 1 and kind == 2:
                gradients.append(self._gradient(buf, *value))
            else:
                rest.append(buf[start:end])
        self.header = pb.PushRequest.FromString(b"".join(rest))
        self.gradients = gradients

    @staticmethod
    def _gradient(buf, start, end):
        name, version, values, indices = "", 0, None, None
        spans = {}
        for number, kind, value, _, _ in fields(buf, start, end):
            if number == 1 and kind == 2:
                name = bytes(buf[value[0]:value[1]]).decode("utf-8", "replace")
            elif number == 4 and kind == 0:
                version = _int64(value)
            elif number in (2, 3) and kind == 2:
                spans[number] = value
        if 2 in spans:
            values = tensor(buf, *spans[2], what=f"gradient of {name!r}")
        else:
            values = tensor(buf, start, start, what=f"gradient of {name!r}")
        if 3 in spans:
            indices = tensor(buf, *spans[3], what=f"indices of the gradient of {name!r}")
        return Gradient(name, version, values, indices)

    def __getattr__(self, name):
        return getattr(self.header, name)


class NamedValue:
    __slots__ = ("name", "version", "array")

    def __init__(self, name, version, array):
        self.name, self.version, self.array = name, version, array


class Reply:
    """A PullResponse or PushResponse read from bytes: the small fields as the message
    (`header`, also reachable as attributes) and `values` [NamedValue with numpy arrays]."""

    def __init__(self, data, message_type, values_field):
        buf = memoryview(data)
        rest, values = [], []
        for number, kind, value, start, end in fields(buf):
            if number == values_field and kind == 2:
                values.append(self._named(buf, *value))
            else:
                rest.append(buf[start:end])
        self.header = message_type.FromString(b"".join(rest))
        self.values = values

    @staticmethod
    def _named(buf, start, end):
        name, version, span = "", 0, None
        for number, kind, value, _, _ in fields(buf, start, end):
            if number == 1 and kind == 2:
                name = bytes(buf[value[0]:value[1]]).decode("utf-8", "replace")
            elif number == 3 and kind == 0:
                version = _int64(value)
            elif number == 2 and kind == 2:
                span = value
        array = tensor(buf, *(span or (start, start)), what=name)
        return NamedValue(name, version, array)

    def __getattr__(self, name):
        return getattr(self.header, name)

    def HasField(self, name):  # noqa: N802 -- protobuf's name
        return self.header.HasField(name)


def pull_reply(data):
    return Reply(data, pb.PullResponse, 1)


def push_reply(data):
    return Reply(data, pb.PushResponse, 3)
