"""numpy arrays to and from the wire's `Tensor` message: dtype + shape + raw little-endian bytes.

Decoding wraps the received bytes with `np.frombuffer` (no copy), so a decoded array is
read-only; nothing is ever pickled.
"""

import math

import numpy as np

from . import psflow_pb2 as pb

# The dtypes the wire carries, by name; anything else is refused.
DTYPES = {name: np.dtype(name).newbyteorder("<") for name in
          ("float16", "float32", "float64", "int32", "int64", "uint8", "bool")}

# The most dimensions a tensor may have (numpy 1 allows 32, numpy 2 64).
MAX_DIMS = 32
# The most elements a shape may describe (numpy's bound on an array's bytes, for 8-byte items).
MAX_ELEMENTS = 2 ** 60
# gRPC message limit on both ends; payloads are kept well below it (see MAX_PAYLOAD_BYTES).
MAX_MESSAGE_BYTES = 512 * 1024 * 1024
# The most tensor bytes the client puts into one request or asks for in one response.
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
# To a chain master: one that was not up yet (or restarted) is reached again within a second,
# not after gRPC's default reconnect backoff (which grows to minutes): meanwhile the replicas'
# leases run out and the workers cannot find a new head.
MASTER_CHANNEL_OPTIONS = CHANNEL_OPTIONS + [("grpc.initial_reconnect_backoff_ms", 100),
                                            ("grpc.min_reconnect_backoff_ms", 100),
                                            ("grpc.max_reconnect_backoff_ms", 1000)]


class CodecError(ValueError):
    """A Tensor message that does not describe a valid array."""


def check_shape(shape, what):
    """CodecError unless `shape` is one numpy can make: at most MAX_DIMS dimensions, none
    negative."""
    if len(shape) > MAX_DIMS:
        raise CodecError(f"{what}: {len(shape)} dimensions; at most {MAX_DIMS} are supported")
    if not shape:
        return
    if min(shape) < 0:
        raise CodecError(f"{what}: negative dimension in shape {list(shape)}")
    # A dimension of 0 makes an empty array of any other size; numpy still refuses shapes
    # whose other dimensions could not be allocated.
    if 0 in shape and math.prod(max(d, 1) for d in shape) >= MAX_ELEMENTS:
        raise CodecError(f"{what}: shape {list(shape)} is too large for an array")


_NAMES = {}  # dtype -> its wire name; numpy's dtype.name is slow enough to show per tensor


def dtype_name(dtype):
    name = _NAMES.get(dtype)
    if name is None:
        name = np.dtype(dtype).name
        if name not in DTYPES:
            raise CodecError(f"dtype {name} cannot travel on the wire; supported: "
                             f"{', '.join(DTYPES)}")
        if isinstance(dtype, np.dtype):
            _NAMES[dtype] = name
    return name


def encode(array, out=None):
    """Fills (or creates) a Tensor message with `array`."""
    array = np.asarray(array)
    name = dtype_name(array.dtype)
    out = pb.Tensor() if out is None else out
    out.dtype = name
    out.shape[:] = array.shape
    wire = DTYPES[name]
    if array.dtype != wire or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array, dtype=wire)
    out.content = array.tobytes()
    return out


def decode(message, what="tensor"):
    """The array a Tensor message holds (read-only, no copy); CodecError if it is malformed."""
    dtype = DTYPES.get(message.dtype)
    if dtype is None:
        raise CodecError(f"{what}: unknown dtype {message.dtype!r}; supported: "
                         f"{', '.join(DTYPES)}")
    shape = tuple(message.shape)
    check_shape(shape, what)
    expected = math.prod(shape) * dtype.itemsize
    content = message.content
    if len(content) != expected:
        raise CodecError(f"{what}: {len(content)} bytes do not hold a {message.dtype} array "
                         f"of shape {list(shape)} ({expected} bytes)")
    return np.frombuffer(content, dtype=dtype).reshape(shape)


# -- building messages around large tensors ------------------------------------------------------
# Protobuf's wire format lets a message be written field by field, in any order. The helpers
# below write a message's small fields with protobuf and its tensors' bytes straight from the
# arrays, so a message of large tensors is assembled with one copy (b"".join) instead of
# three (tobytes, the field assignment, SerializeToString). Any protobuf parser reads it.

def varint(value):
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def field_header(number, length):
    """The key and length of a length-delimited field."""
    return varint(number << 3 | 2) + varint(length)


# A tensor's elements start at a multiple of this many bytes of the message, when the writer
# knows where the message's pieces land (see submessage_pieces): a reader then uses them in
# place, where misaligned ones would have to be copied first.
ALIGN = 64


def tensor_pieces(array, pad=None):
    """(length, pieces) of a Tensor message holding `array`; the last piece is the array's
    memory itself (no copy yet). `pad`: that many bytes of padding before the content."""
    array = np.asarray(array)
    name = dtype_name(array.dtype)
    wire = DTYPES[name]
    if array.dtype != wire or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array, dtype=wire)
    head = pb.Tensor(dtype=name, shape=array.shape).SerializeToString()
    if pad is not None:
        head += field_header(pb.Tensor.PADDING_FIELD_NUMBER, pad) + bytes(pad)
    content = memoryview(array.reshape(-1)).cast("B")
    prefix = field_header(pb.Tensor.CONTENT_FIELD_NUMBER, content.nbytes)
    return len(head) + len(prefix) + content.nbytes, [head, prefix, content]


def submessage_pieces(number, head, tensor_number, array, offset=None):
    """(pieces) of field `number` holding a message whose small fields are serialized in
    `head` and whose field `tensor_number` is a Tensor of `array`. With `offset`, the
    position in the whole message where these pieces begin, the Tensor is padded so that the
    array's bytes begin at a multiple of ALIGN."""
    pad = None if offset is None else 0
    for _ in range(4):  # a longer pad may lengthen a length's varint: settle in a few rounds
        length, pieces = tensor_pieces(array, pad)
        inner = field_header(tensor_number, length)
        pieces = [field_header(number, len(head) + len(inner) + length), head, inner, *pieces]
        if offset is None:
            return pieces
        misaligned = (offset + sum(len(p) for p in pieces[:-1])) % ALIGN
        if not misaligned:
            break
        pad += ALIGN - misaligned
        if pad >= ALIGN:  # as aligned, and the pad's own varint stays one byte long
            pad -= ALIGN
    return pieces

