"""The messages that carry large tensors, written and read without copying the tensors.

Protobuf's parser copies every bytes field it reads, and reading the field from Python copies
it again; building such a message from arrays copies them three times. The few messages whose
bulk is tensor bytes (a push's gradients, the values in a pull's or a push's reply) are
handled here instead. Writing: the small fields are serialized by protobuf and the tensors'
bytes go straight from the arrays into the message (one copy, see codec.submessage_pieces).
Reading: the small fields are parsed by protobuf from their own bytes, and each tensor becomes
`np.frombuffer` over the received message at its offset, checked exactly as codec.decode
checks it. Any protobuf parser reads what is written here; field numbers come from the
generated module.
"""

import math

import numpy as np

from . import codec
from . import psflow_pb2 as pb

_TENSOR_DTYPE = pb.Tensor.DTYPE_FIELD_NUMBER
_TENSOR_SHAPE = pb.Tensor.SHAPE_FIELD_NUMBER
_TENSOR_CONTENT = pb.Tensor.CONTENT_FIELD_NUMBER
_GRADIENT_NAME = pb.Gradient.NAME_FIELD_NUMBER
_GRADIENT_VALUES = pb.Gradient.VALUES_FIELD_NUMBER
_GRADIENT_INDICES = pb.Gradient.INDICES_FIELD_NUMBER
_GRADIENT_VERSION = pb.Gradient.VERSION_FIELD_NUMBER
_GRADIENT_KEYED = pb.Gradient.KEYED_FIELD_NUMBER
_NAMED_NAME = pb.NamedTensor.NAME_FIELD_NUMBER
_NAMED_TENSOR = pb.NamedTensor.TENSOR_FIELD_NUMBER
_NAMED_VERSION = pb.NamedTensor.VERSION_FIELD_NUMBER
_PUSH_GRADIENTS = pb.PushRequest.GRADIENTS_FIELD_NUMBER
_PULL_VALUES = pb.PullResponse.VALUES_FIELD_NUMBER
_PUSHED_VALUES = pb.PushResponse.VALUES_FIELD_NUMBER

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
        if number == _TENSOR_DTYPE and kind == 2:
            dtype_name = bytes(buf[value[0]:value[1]]).decode("utf-8", "replace")
        elif number == _TENSOR_SHAPE and kind == 2:  # packed
            pos, stop = value
            while pos < stop:
                dim, pos = _varint(buf, pos, stop)
                shape.append(_int64(dim))
        elif number == _TENSOR_SHAPE and kind == 0:
            shape.append(_int64(value))
        elif number == _TENSOR_CONTENT and kind == 2:
            content = value
    dtype = codec.DTYPES.get(dtype_name)
    if dtype is None:
        raise codec.CodecError(f"{what}: unknown dtype {dtype_name!r}; supported: "
                               f"{', '.join(codec.DTYPES)}")
    codec.check_shape(shape, what)
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
    __slots__ = ("name", "version", "values", "indices", "keyed")

    def __init__(self, name, version, values, indices, keyed=False):
        self.name, self.version, self.values, self.indices = name, version, values, indices
        self.keyed = keyed  # `name` is an embedding table and `indices` its keys


class Push:
    """A PushRequest read from bytes: its small fields as a PushRequest (`header`, also
    reachable as attributes) and `gradients` [Gradient with numpy arrays]."""

    def __init__(self, data):
        buf = memoryview(data)
        rest, gradients = [], []
        for number, kind, value, start, end in fields(buf):
            if number == _PUSH_GRADIENTS and kind == 2:
                gradients.append(self._gradient(buf, *value))
            else:
                rest.append(buf[start:end])
        self.header = pb.PushRequest.FromString(b"".join(rest))
        self.gradients = gradients

    @staticmethod
    def _gradient(buf, start, end):
        name, version, values, indices, keyed = "", 0, None, None, False
        spans = {}
        for number, kind, value, _, _ in fields(buf, start, end):
            if number == _GRADIENT_NAME and kind == 2:
                name = bytes(buf[value[0]:value[1]]).decode("utf-8", "replace")
            elif number == _GRADIENT_VERSION and kind == 0:
                version = _int64(value)
            elif number == _GRADIENT_KEYED and kind == 0:
                keyed = bool(value)
            elif number in (_GRADIENT_VALUES, _GRADIENT_INDICES) and kind == 2:
                spans[number] = value
        values = tensor(buf, *spans.get(_GRADIENT_VALUES, (start, start)),
                        what=f"gradient of {name!r}")
        if _GRADIENT_INDICES in spans:
            indices = tensor(buf, *spans[_GRADIENT_INDICES],
                             what=f"indices of the gradient of {name!r}")
        return Gradient(name, version, values, indices, keyed)

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
            if number == _NAMED_NAME and kind == 2:
                name = bytes(buf[value[0]:value[1]]).decode("utf-8", "replace")
            elif number == _NAMED_VERSION and kind == 0:
                version = _int64(value)
            elif number == _NAMED_TENSOR and kind == 2:
                span = value
        array = tensor(buf, *(span or (start, start)), what=name)
        return NamedValue(name, version, array)

    def __getattr__(self, name):
        return getattr(self.header, name)


def pull_reply(data):
    """A PullResponse read from bytes (the client's deserializer)."""
    return Reply(data, pb.PullResponse, _PULL_VALUES)


def push_reply(data):
    """A PushResponse read from bytes (the client's deserializer)."""
    return Reply(data, pb.PushResponse, _PUSHED_VALUES)


# -- writing -------------------------------------------------------------------------------------
def _with_values(header, number, values):
    """The bytes of `header` (a message) followed by `values` [(name, version, array)] as its
    repeated NamedTensor field `number`."""
    return b"".join(_values_pieces(number, values, [header.SerializeToString()]))


def _values_pieces(number, values, pieces):
    """`pieces` followed by `values` [(name, version, array)] as the repeated NamedTensor
    field `number`, each array's bytes at an aligned position of the whole."""
    offset = sum(len(p) for p in pieces)
    for name, version, array in values:
        head = pb.NamedTensor(name=name, version=version).SerializeToString()
        more = codec.submessage_pieces(number, head, _NAMED_TENSOR, array, offset)
        offset += sum(len(p) for p in more)
        pieces += more
    return pieces


def pull_response(header, values):
    """A PullResponse's bytes: `header` (a PullResponse without values) and `values`
    [(name, version, array)], each array copied once, straight into the message."""
    return _with_values(header, _PULL_VALUES, values)


def push_response(header, values):
    """A PushResponse's bytes, as pull_response."""
    return _with_values(header, _PUSHED_VALUES, values)


def pushed_values(values):
    """The bytes of a PushResponse's `values` field alone: the same values sent to several
    workers, each with its own header after them (a message's fields may come in any order),
    so that the arrays are aligned whatever the header."""
    return b"".join(_values_pieces(_PUSHED_VALUES, values, []))


class Pieces(list):
    """A message's bytes in pieces, to be sent one after the other (see psflow.transport.lane)."""

    def to_bytes(self):
        return b"".join(self)


class PushBuilder:
    """A PushRequest whose gradient values stay numpy arrays until it is sent: `to_bytes()`
    writes them straight into the message's bytes (one copy). Every other field is set on it
    as on a PushRequest."""

    def __init__(self, **fields):
        object.__setattr__(self, "header", pb.PushRequest(**fields))
        object.__setattr__(self, "gradients", [])

    def add_gradient(self, name, version, values, indices=None, keyed=False):
        head = pb.Gradient(name=name, version=version, keyed=keyed)
        if indices is not None:
            codec.encode(indices, head.indices)
        self.gradients.append((head.SerializeToString(), values))

    def to_bytes(self):
        return b"".join(self.to_pieces())

    def to_pieces(self):
        """The message's bytes as a list of pieces, the arrays' among them uncopied."""
        pieces = [self.header.SerializeToString()]
        offset = len(pieces[0])
        for head, values in self.gradients:
            more = codec.submessage_pieces(_PUSH_GRADIENTS, head, _GRADIENT_VALUES, values,
                                           offset)
            offset += sum(len(p) for p in more)
            pieces += more
        return pieces

    def __getattr__(self, name):
        return getattr(self.header, name)

    def __setattr__(self, name, value):
        setattr(self.header, name, value)


def push_id_of(request):
    """The (incarnation, sequence, index) naming a PushRequest, or None when it has none."""
    if not request.HasField("id") or request.id.sequence == 0:
        return None
    return request.id.incarnation, request.id.sequence, request.id.index

