"""What a pushed gradient must be before the shard applies it.

Dtype rules: a gradient must be floating point, like the variable it updates (integer
variables take no gradients). A float gradient of another width (say float64 for a float32
variable) is cast to the variable's dtype before the rule runs, so the slots and the
arithmetic stay in the variable's dtype; an integer or bool gradient is refused. A gradient
holding NaN or Inf is refused unless the shard allows them.
"""

import numpy as np

from psflow.errors import FailedPreconditionError, InvalidArgumentError
from psflow.graph import format_shape as _shape_text
from psflow.indexed_slices import IndexedSlices


def check_gradients(gradients, variables, tables, allow_nonfinite, counters):
    """Checks (name, values, indices or None, version[, keyed]) gradients against their
    variables (`variables`, a DenseVariables) or tables (`tables`, a ShardTables); returns
    ([(variable or table, gradient, version)], bytes received). Raises on the first bad one,
    so nothing is applied from a push with a bad gradient."""
    checked = []
    received = 0
    for gradient in gradients:
        name, values, indices, version = gradient[:4]
        if len(gradient) > 4 and gradient[4]:  # keyed: a table's rows by key
            held = tables.get(name)
            grad = _keyed(held, values, indices)
            if not allow_nonfinite and not finite(grad.values):
                counters.count_nonfinite()
                raise InvalidArgumentError(
                    f"gradient for table {name!r} holds NaN or Inf; nothing of the push was "
                    "applied (a parameter server started with --allow-nonfinite applies such "
                    "gradients)")
            checked.append((held, grad, version))
            received += values.nbytes + indices.nbytes
            continue
        var = variables.get(name)
        if var.dtype.kind != "f":
            raise InvalidArgumentError(f"variable {name!r} has dtype {var.dtype.name}; only "
                                       "floating-point variables take gradients")
        grad = _dense(var, values) if indices is None else _sparse(var, values, indices)
        if var.value is None:
            raise FailedPreconditionError(
                f"variable {name!r} is not initialized yet; the chief initializes the "
                "variables before anyone pushes")
        data = grad.values if isinstance(grad, IndexedSlices) else grad  # after any cast
        if not allow_nonfinite and not finite(data):
            counters.count_nonfinite()
            raise InvalidArgumentError(
                f"gradient for variable {name!r} holds NaN or Inf (or values beyond "
                f"{var.dtype.name}); nothing of the push was applied (a parameter server "
                "started with --allow-nonfinite applies such gradients)")
        received += values.nbytes + (0 if indices is None else indices.nbytes)
        checked.append((var, grad, version))
    counters.count_gradients(held for held, _, _ in checked)
    return checked, received


def finite(values):
    """True when no element of `values` is NaN or Inf. A dot product of the array with itself
    is NaN or Inf when any element is, and BLAS runs it at memory speed; only an overflow of
    huge but finite values needs the exact look."""
    if values.dtype in (np.float32, np.float64) and values.flags.c_contiguous:
        flat = values.reshape(-1)
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(np.dot(flat, flat)):
                return True
    return bool(np.isfinite(values).all())


def _gradient_dtype(var, values, what):
    if values.dtype.kind != "f":
        raise InvalidArgumentError(f"{what} for variable {var.name!r} has dtype "
                                   f"{values.dtype.name}, but the variable has dtype "
                                   f"{var.dtype.name}")
    # Another float width is cast once here, so the rule's arithmetic is the variable's.
    if values.dtype == var.dtype:
        return values
    with np.errstate(over="ignore"):  # what overflows is refused as non-finite next
        return values.astype(var.dtype)


def _dense(var, values):
    if values.shape != var.shape:
        raise InvalidArgumentError(f"gradient for variable {var.name!r} has shape "
                                   f"{_shape_text(values.shape)}, but the variable has shape "
                                   f"{_shape_text(var.shape)}")
    return _gradient_dtype(var, values, "gradient")


def _sparse(var, values, indices):
    if not var.shape:
        raise InvalidArgumentError(f"sparse gradient for scalar variable {var.name!r}: a "
                                   "scalar has no rows")
    if indices.dtype.kind not in "iu":
        raise InvalidArgumentError(f"sparse gradient for variable {var.name!r}: indices "
                                   f"must be int64, got {indices.dtype.name}")
    if indices.ndim != 1:
        raise InvalidArgumentError(f"sparse gradient for variable {var.name!r}: indices "
                                   f"must be 1-D, got shape {_shape_text(indices.shape)}")
    expected = (indices.size,) + var.shape[1:]
    if values.shape != expected:
        raise InvalidArgumentError(
            f"sparse gradient for variable {var.name!r} has values of shape "
            f"{_shape_text(values.shape)}, but {indices.size} rows of the variable's shape "
            f"{_shape_text(var.shape)} make {_shape_text(expected)}")
    if indices.size:
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= var.shape[0]:
            bad = low if low < 0 else high
            raise InvalidArgumentError(f"sparse gradient for variable {var.name!r}: row "
                                       f"index {bad} is out of range [0, {var.shape[0]})")
    values = _gradient_dtype(var, values, "sparse gradient")
    return IndexedSlices(values, indices, var.shape)


def _keyed(held, values, keys):
    name = held.name
    if keys is None or keys.dtype.kind not in "iu" or keys.ndim != 1:
        raise InvalidArgumentError(f"gradient for table {name!r}: keys must be a 1-D "
                                   "int64 tensor")
    if values.shape != (keys.size, held.dim):
        raise InvalidArgumentError(
            f"gradient for table {name!r} has values of shape {_shape_text(values.shape)}, "
            f"but {keys.size} keys of dimension {held.dim} make "
            f"{_shape_text((keys.size, held.dim))}")
    values = _gradient_dtype(held, values, "gradient")
    return IndexedSlices(values, keys.astype(np.int64, copy=False), (-1, held.dim))
