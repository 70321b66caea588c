"""TensorFlow's TensorProto to and from numpy.

A tensor arrives either as `tensor_content` (the raw little-endian bytes of the whole tensor)
or in the typed field of its dtype (`float_val`, `int64_val`, ...), flattened in row-major
order; a typed field holding one value fills the whole shape, as TensorFlow reads it. Answers
carry numeric tensors as `tensor_content` (one copy, no per-value encoding) and strings in
`string_val`; TensorFlow's `make_ndarray` and TF Serving's clients read both.
"""

import math

import numpy as np

from psflow.errors import InvalidArgumentError
from psflow.proto.tfserving import tensor_pb2, tensor_shape_pb2, types_pb2

DataType = types_pb2.DataType
MAX_BYTES = 1 << 30  # per input tensor, as gRPC's message limit

# DataType -> (numpy dtype, the typed field that holds its values).
_BY_DATATYPE = {
    DataType.DT_FLOAT: (np.dtype("float32"), "float_val"),
    DataType.DT_DOUBLE: (np.dtype("float64"), "double_val"),
    DataType.DT_HALF: (np.dtype("float16"), "half_val"),
    DataType.DT_INT8: (np.dtype("int8"), "int_val"),
    DataType.DT_INT16: (np.dtype("int16"), "int_val"),
    DataType.DT_INT32: (np.dtype("int32"), "int_val"),
    DataType.DT_INT64: (np.dtype("int64"), "int64_val"),
    DataType.DT_UINT8: (np.dtype("uint8"), "int_val"),
    DataType.DT_UINT16: (np.dtype("uint16"), "int_val"),
    DataType.DT_UINT32: (np.dtype("uint32"), "uint32_val"),
    DataType.DT_UINT64: (np.dtype("uint64"), "uint64_val"),
    DataType.DT_BOOL: (np.dtype("bool"), "bool_val"),
    DataType.DT_STRING: (np.dtype("object"), "string_val"),
}
_BY_NUMPY = {dtype: datatype for datatype, (dtype, _) in _BY_DATATYPE.items()}
_DT_INVALID = DataType.DT_INVALID


def datatype_of(dtype):
    """The DataType of a numpy dtype (str and bytes arrays are DT_STRING)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return DataType.DT_STRING
    if dtype not in _BY_NUMPY:
        raise InvalidArgumentError(f"dtype {dtype} has no TensorFlow DataType")
    return _BY_NUMPY[dtype]


def numpy_dtype_of(datatype):
    """The numpy dtype of a DataType (object for DT_STRING)."""
    if datatype not in _BY_DATATYPE:
        name = DataType.Name(datatype) if datatype in DataType.values() else str(datatype)
        raise InvalidArgumentError(f"dtype {name} is not supported")
    return _BY_DATATYPE[datatype][0]


def shape_of(message, what):
    """The shape a TensorShapeProto gives a tensor; unknown sizes are refused."""
    if message.unknown_rank:
        raise InvalidArgumentError(f"{what} has an unknown rank")
    shape = tuple([dim.size for dim in message.dim])
    if shape and min(shape) < 0:
        raise InvalidArgumentError(f"{what} has a negative dimension in shape {list(shape)}")
    return shape


def to_numpy(message, name="tensor"):
    """The array a TensorProto holds; an error naming `name` when it is malformed."""
    what = f"input '{name}'"
    datatype = message.dtype
    known = _BY_DATATYPE.get(datatype)
    if known is not None:
        dtype = known[0]
    elif datatype == _DT_INVALID:
        raise InvalidArgumentError(f"{what} has no dtype")
    else:
        try:
            dtype = numpy_dtype_of(datatype)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"{what}: {exc}") from None
    shape = shape_of(message.tensor_shape, what)
    count = math.prod(shape)
    if count * dtype.itemsize > MAX_BYTES:
        # One typed value fills the whole shape: refuse before allocating it.
        raise InvalidArgumentError(f"{what}: shape {list(shape)} of {dtype} is over the limit "
                                   f"of {MAX_BYTES} bytes")
    if message.tensor_content:
        if dtype.kind == "O":
            raise InvalidArgumentError(f"{what}: DT_STRING values go in string_val, "
                                       "not tensor_content")
        content = message.tensor_content
        if len(content) != count * dtype.itemsize:
            raise InvalidArgumentError(
                f"{what}: tensor_content holds {len(content)} bytes, shape {list(shape)} of "
                f"{dtype} needs {count * dtype.itemsize}")
        return np.frombuffer(content, dtype=dtype.newbyteorder("<")).astype(
            dtype, copy=False).reshape(shape)
    field = _BY_DATATYPE[message.dtype][1]
    values = getattr(message, field)
    if len(values) == count:
        flat = _typed_values(values, message.dtype, dtype, what)
    elif len(values) == 1:
        flat = np.repeat(_typed_values(values, message.dtype, dtype, what), count)
    else:
        raise InvalidArgumentError(f"{what}: {field} holds {len(values)} values, shape "
                                   f"{list(shape)} needs {count}")
    return flat.reshape(shape)


def _typed_values(values, datatype, dtype, what):
    if datatype == DataType.DT_HALF:
        return np.asarray(values, dtype=np.int32).astype(np.uint16).view(np.float16)
    if dtype.kind == "O":
        array = np.empty(len(values), dtype=object)
        array[:] = list(values)
        return array
    if dtype.kind in "iu":
        ints = np.asarray(values, dtype=np.int64 if dtype.kind == "i" else np.uint64)
        if len(ints) and (ints.min() < np.iinfo(dtype).min or ints.max() > np.iinfo(dtype).max):
            raise InvalidArgumentError(f"{what}: a value is out of the range of {dtype}")
        return ints.astype(dtype)
    return np.asarray(values, dtype=dtype)


def from_numpy(array, message=None):
    """A TensorProto holding `array` (filled into `message` when given): raw bytes for
    numbers, string_val for strings."""
    array = np.asarray(array)
    if message is None:
        message = tensor_pb2.TensorProto()
    message.dtype = datatype_of(array.dtype)
    dims = message.tensor_shape.dim
    for size in array.shape:
        dims.add(size=size)
    if array.dtype.kind in "OSU":
        message.string_val.extend(v.encode() if isinstance(v, str) else bytes(v)
                                  for v in array.reshape(-1))
    else:
        message.tensor_content = np.ascontiguousarray(
            array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return message


def typed(array):
    """A TensorProto holding `array` in its typed field, as TensorFlow's `make_tensor_proto`
    writes small tensors (used by clients and tests)."""
    array = np.asarray(array)
    datatype = datatype_of(array.dtype)
    message = tensor_pb2.TensorProto(dtype=datatype)
    message.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=s)
                                    for s in array.shape)
    field = getattr(message, _BY_DATATYPE[datatype][1])
    flat = array.reshape(-1)
    if datatype == DataType.DT_HALF:
        field.extend(flat.view(np.uint16).astype(np.int32).tolist())
    elif datatype == DataType.DT_STRING:
        field.extend(v.encode() if isinstance(v, str) else bytes(v) for v in flat)
    else:
        field.extend(flat.tolist())
    return message
