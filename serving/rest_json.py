"""TF Serving's REST JSON to and from arrays.

A predict request holds `instances` (row format: a list with one entry per example, each the
value of the only input or an object of every input) or `inputs` (columnar: the value of the
only input or an object of every input, batched); strings may be given as `{"b64": ...}`.
Values are read by the signature's dtypes: a number where a string is expected, or a fraction
where an integer is, is refused. The answer is `predictions` (rows) or `outputs` (columns).
"""

import base64
import binascii

import numpy as np

from psflow.errors import InvalidArgumentError


def _b64_decoded(value, key):
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise InvalidArgumentError(f"input '{key}': an object value must be {{\"b64\": str}}")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except binascii.Error as exc:
            raise InvalidArgumentError(f"input '{key}': bad base64: {exc}") from None
    if isinstance(value, list):
        return [_b64_decoded(v, key) for v in value]
    if isinstance(value, str):
        return value.encode()
    raise InvalidArgumentError(f"input '{key}' expects strings, got {type(value).__name__}")


def _has_b64(value):
    if isinstance(value, dict):
        return True
    return isinstance(value, list) and any(_has_b64(v) for v in value)


def array_of(value, dtype, key):
    """The array of a JSON value for an input of `dtype`."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        decoded = _b64_decoded(value, key)
        array = np.array(decoded, dtype=object)
        if array.dtype != object or any(not isinstance(v, bytes) for v in array.reshape(-1)):
            raise InvalidArgumentError(f"input '{key}' is not a rectangular list of strings")
        return array
    try:
        array = np.array(value)
    except ValueError as exc:  # ragged lists
        if _has_b64(value):
            raise InvalidArgumentError(f"input '{key}' expects {dtype}, got an object") from None
        raise InvalidArgumentError(f"input '{key}' is not a rectangular list: {exc}") from None
    kind = array.dtype.kind
    if array.size == 0 and kind == "f":
        return array.astype(dtype)
    if kind not in "biuf":
        if kind == "O" and _has_b64(value):  # only numbers make a numeric array
            raise InvalidArgumentError(f"input '{key}' expects {dtype}, got an object")
        raise InvalidArgumentError(f"input '{key}' expects {dtype}: "
                                   "values must be numbers in a rectangular list")
    if dtype.kind == "b" and kind != "b":
        raise InvalidArgumentError(f"input '{key}' expects bool, got {array.dtype}")
    if dtype.kind in "iu":
        if kind == "f":
            raise InvalidArgumentError(f"input '{key}' expects {dtype}, got fractions")
        if kind in "iu" and array.size and (array.min() < np.iinfo(dtype).min
                                            or array.max() > np.iinfo(dtype).max):
            raise InvalidArgumentError(f"input '{key}': a value is out of the range of {dtype}")
    with np.errstate(over="ignore"):
        cast = array.astype(dtype)
    if dtype.kind == "f" and kind == "f" and np.isfinite(array).sum() != np.isfinite(cast).sum():
        raise InvalidArgumentError(f"input '{key}': a value is out of the range of {dtype}")
    return cast


def request_inputs(body, signature):
    """({input key: array}, row format?) of a parsed predict request body."""
    if not isinstance(body, dict):
        raise InvalidArgumentError("the request body must be a JSON object")
    has_rows, has_columns = "instances" in body, "inputs" in body
    if has_rows == has_columns:
        raise InvalidArgumentError("the request must have exactly one of 'instances' (row "
                                   "format) or 'inputs' (columnar format)")
    dtypes = {key: info.dtype for key, info in signature.inputs.items()}
    if has_rows:
        return _rows(body["instances"], dtypes), True
    columns = body["inputs"]
    if isinstance(columns, dict) and not (len(dtypes) == 1 and set(columns) == {"b64"}):
        return {key: array_of(value, _dtype(dtypes, key), key)
                for key, value in columns.items()}, False
    key = _only_input(dtypes)
    return {key: array_of(columns, dtypes[key], key)}, False


def _dtype(dtypes, key):
    if key not in dtypes:
        raise InvalidArgumentError(f"input '{key}' is not in the signature; its inputs are "
                                   f"{sorted(dtypes)}")
    return dtypes[key]


def _only_input(dtypes):
    if len(dtypes) != 1:
        raise InvalidArgumentError(f"the signature has {len(dtypes)} inputs "
                                   f"{sorted(dtypes)}: name them in an object")
    return next(iter(dtypes))


def _rows(instances, dtypes):
    if not isinstance(instances, list) or not instances:
        raise InvalidArgumentError("'instances' must be a non-empty list")
    named = [isinstance(i, dict) and not (len(dtypes) == 1 and set(i) == {"b64"})
             for i in instances]
    if not any(named):
        key = _only_input(dtypes)
        return {key: array_of(instances, dtypes[key], key)}
    if not all(named):
        raise InvalidArgumentError("'instances' mixes objects and plain values")
    keys = set(instances[0])
    for index, instance in enumerate(instances):
        if set(instance) != keys:
            raise InvalidArgumentError(f"instance {index} has inputs {sorted(instance)}, "
                                       f"instance 0 has {sorted(keys)}")
    return {key: array_of([i[key] for i in instances], _dtype(dtypes, key), key)
            for key in sorted(keys)}


def _jsonable(array):
    if array.dtype.kind in "OSU":
        return np.vectorize(_string_json, otypes=[object])(array).tolist()
    return array.tolist()


def _string_json(value):
    if isinstance(value, str):
        return value
    try:
        return value.decode()
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode()}


def predict_answer(outputs, rows):
    """The JSON object answering a predict request in its own format."""
    if not rows:
        if len(outputs) == 1:
            return {"outputs": _jsonable(next(iter(outputs.values())))}
        return {"outputs": {key: _jsonable(value) for key, value in outputs.items()}}
    if len(outputs) == 1:
        return {"predictions": _jsonable(next(iter(outputs.values())))}
    batch = {np.shape(v)[0] if np.ndim(v) else None for v in outputs.values()}
    if len(batch) != 1 or None in batch:
        raise InvalidArgumentError("the outputs do not share a batch dimension: ask in the "
                                   "columnar format ('inputs')")
    columns = {key: _jsonable(value) for key, value in outputs.items()}
    return {"predictions": [{key: column[i] for key, column in columns.items()}
                            for i in range(batch.pop())]}
