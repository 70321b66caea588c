"""Optimizers' update rules as plain numpy functions of (value, grad, slots, hyperparameters).

They update `value` and `slots` in place: a parameter server runs the very same functions on
the arrays it holds, so local and distributed training apply identical arithmetic. `grad` is a
dense array of the value's shape, or an IndexedSlices (a sparse, row-wise gradient).
The formulas are TensorFlow 1.x's.
"""

import numpy as np

from ..errors import InvalidArgumentError
from ..indexed_slices import IndexedSlices
from ..key_index import Dedup


def _dense(grad, value):
    if isinstance(grad, IndexedSlices):
        grad = grad.to_dense()
    grad = np.asarray(grad)
    if grad.shape != value.shape:
        raise InvalidArgumentError(f"gradient of shape {grad.shape} does not match the "
                                   f"variable's shape {value.shape}")
    return grad


def _rows(grad, value):
    """A sparse gradient with each row once: (unique row indices, summed rows)."""
    if tuple(grad.dense_shape) != value.shape:
        raise InvalidArgumentError(f"sparse gradient for shape {grad.dense_shape} does not "
                                   f"match the variable's shape {value.shape}")
    indices = np.asarray(grad.indices).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= value.shape[0]):
        raise InvalidArgumentError(f"sparse gradient row index out of range [0, "
                                   f"{value.shape[0]})")
    values = np.asarray(grad.values, dtype=value.dtype)
    if indices.size < 2 or (indices[1:] > indices[:-1]).all():  # each row once already
        return indices, values.reshape((indices.size,) + value.shape[1:])
    found = Dedup(indices)
    return found.unique, found.sum_rows(values.reshape((indices.size,) + value.shape[1:]))


# Dense updates of large variables run over blocks of this many elements, so that their
# temporaries stay small (a parameter server's memory is its variables, not their copies).
BLOCK = 1 << 16


def _blocks(*arrays):
    """Flat views of `arrays` (all of one size, C-contiguous), block by block."""
    flats = [a.reshape(-1) for a in arrays]
    size = flats[0].size
    if size <= BLOCK:
        yield flats
        return
    for start in range(0, size, BLOCK):
        yield [f[start:start + BLOCK] for f in flats]


def _contiguous(*arrays):
    return all(a.flags.c_contiguous for a in arrays)


def sgd(value, grad, slots, learning_rate):
    """value -= learning_rate * grad"""
    if isinstance(grad, IndexedSlices):
        rows, summed = _rows(grad, value)
        value[rows] -= learning_rate * summed
        return
    arrays = (value, _dense(grad, value))
    for value_b, g_b in _blocks(*arrays) if _contiguous(*arrays) else [arrays]:
        value_b -= learning_rate * g_b


def sgd_slots(value, **hyper):
    return {}


def momentum(value, grad, slots, learning_rate, momentum, use_nesterov=False):
    """accum = momentum * accum + grad; value -= learning_rate * accum
    (Nesterov: value -= learning_rate * (grad + momentum * accum)). A sparse gradient updates
    only its rows, as TensorFlow's sparse momentum does."""
    accum = slots["momentum"]
    if isinstance(grad, IndexedSlices):
        rows, g = _rows(grad, value)
        accum[rows] = accum[rows] * momentum + g
        step = g + momentum * accum[rows] if use_nesterov else accum[rows]
        value[rows] -= learning_rate * step
        return
    g = _dense(grad, value)
    arrays = (value, g, accum)
    for value_b, g_b, accum_b in _blocks(*arrays) if _contiguous(*arrays) else [arrays]:
        accum_b *= momentum
        accum_b += g_b
        value_b -= learning_rate * (g_b + momentum * accum_b if use_nesterov else accum_b)


def momentum_slots(value, **hyper):
    return {"momentum": np.zeros_like(value)}


def adagrad(value, grad, slots, learning_rate, initial_accumulator_value=0.1):
    """accum += grad ** 2; value -= learning_rate * grad / sqrt(accum)"""
    accum = slots["accumulator"]
    if isinstance(grad, IndexedSlices):
        rows, g = _rows(grad, value)
        accum[rows] += g * g
        value[rows] -= learning_rate * g / np.sqrt(accum[rows])
        return
    g = _dense(grad, value)
    accum += g * g
    value -= learning_rate * g / np.sqrt(accum)


def adagrad_slots(value, initial_accumulator_value=0.1, **hyper):
    return {"accumulator": np.full_like(value, initial_accumulator_value)}


def adam(value, grad, slots, learning_rate, beta1=0.9, beta2=0.999, epsilon=1e-8,
         lazy_sparse=True):
    """t += 1; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    value -= learning_rate * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + epsilon).
    A sparse gradient updates only its rows and their moments (lazy Adam, so a step costs
    the rows it touches, not the table); with lazy_sparse=False it is applied densely (all
    moments decay), as TensorFlow 1.x's Adam does."""
    m, v, t = slots["m"], slots["v"], slots["t"]
    t += 1
    step = float(t)
    lr_t = learning_rate * np.sqrt(1.0 - beta2 ** step) / (1.0 - beta1 ** step)
    if isinstance(grad, IndexedSlices) and lazy_sparse:
        rows, g = _rows(grad, value)
        m_rows = m[rows] * beta1 + (1.0 - beta1) * g
        v_rows = v[rows] * beta2 + (1.0 - beta2) * (g * g)
        m[rows], v[rows] = m_rows, v_rows
        value[rows] -= (lr_t * m_rows / (np.sqrt(v_rows) + epsilon)).astype(value.dtype)
        return
    g = _dense(grad, value)
    arrays = (value, g, m, v)
    for value_b, g_b, m_b, v_b in _blocks(*arrays) if _contiguous(*arrays) else [arrays]:
        m_b *= beta1
        m_b += (1.0 - beta1) * g_b
        v_b *= beta2
        v_b += (1.0 - beta2) * (g_b * g_b)
        value_b -= lr_t * m_b / (np.sqrt(v_b) + epsilon)


def adam_slots(value, **hyper):
    return {"m": np.zeros_like(value), "v": np.zeros_like(value),
            "t": np.zeros((), dtype=np.int64)}


def ftrl(value, grad, slots, learning_rate, learning_rate_power=-0.5, l1=0.0, l2=0.0,
         initial_accumulator_value=0.1):
    """FTRL-Proximal (McMahan et al.), as TensorFlow 1.x's ApplyFtrl:
    n' = n + g^2; sigma = (n'^-p - n^-p) / lr; z += g - sigma * w;
    w = (sign(z) l1 - z) / (n'^-p / lr + 2 l2) where |z| > l1, else 0 (p = learning_rate_power).
    A sparse gradient updates only its rows and their slots."""
    accum, linear = slots["accum"], slots["linear"]
    if isinstance(grad, IndexedSlices):
        rows, g = _rows(grad, value)
        w, n, z = value[rows], accum[rows], linear[rows]
    else:
        g = _dense(grad, value)
        rows, w, n, z = None, value, accum, linear
    n_new = n + g * g
    power = -learning_rate_power
    sigma = (n_new ** power - n ** power) / learning_rate
    z = z + g - sigma * w
    quadratic = n_new ** power / learning_rate + 2.0 * l2
    w_new = np.where(np.abs(z) > l1, (np.sign(z) * l1 - z) / quadratic, 0.0).astype(value.dtype)
    if rows is None:
        value[...] = w_new
        accum[...] = n_new
        linear[...] = z
    else:
        value[rows], accum[rows], linear[rows] = w_new, n_new, z


def ftrl_slots(value, initial_accumulator_value=0.1, **hyper):
    return {"accum": np.full_like(value, initial_accumulator_value),
            "linear": np.zeros_like(value)}


def _rows_or_all(grad, value):
    """(rows, the gradient's rows) of a sparse gradient, or (Ellipsis, the dense gradient)."""
    if isinstance(grad, IndexedSlices):
        return _rows(grad, value)
    return Ellipsis, _dense(grad, value)


def rmsprop(value, grad, slots, learning_rate, decay=0.9, momentum=0.0, epsilon=1e-10,
            centered=False):
    """ms = decay ms + (1 - decay) g^2; (centered: mg = decay mg + (1 - decay) g, and the
    denominator is ms - mg^2); mom = momentum mom + lr g / sqrt(denominator + epsilon);
    value -= mom. TF1's RMSProp, whose ms starts at 1. A sparse gradient updates its rows."""
    rows, g = _rows_or_all(grad, value)
    ms = slots["rms"][rows] * decay + (1.0 - decay) * (g * g)
    slots["rms"][rows] = ms
    if centered:
        mg = slots["mg"][rows] * decay + (1.0 - decay) * g
        slots["mg"][rows] = mg
        ms = ms - mg * mg
    mom = slots["momentum"][rows] * momentum + learning_rate * g / np.sqrt(ms + epsilon)
    slots["momentum"][rows] = mom
    value[rows] -= mom.astype(value.dtype)


def rmsprop_slots(value, centered=False, **hyper):
    slots = {"rms": np.ones_like(value), "momentum": np.zeros_like(value)}
    if centered:
        slots["mg"] = np.zeros_like(value)
    return slots


def adadelta(value, grad, slots, learning_rate, rho=0.95, epsilon=1e-8):
    """accum = rho accum + (1 - rho) g^2; update = sqrt(accum_update + eps) /
    sqrt(accum + eps) g; accum_update = rho accum_update + (1 - rho) update^2;
    value -= lr update. A sparse gradient updates its rows."""
    rows, g = _rows_or_all(grad, value)
    accum = slots["accum"][rows] * rho + (1.0 - rho) * (g * g)
    update = np.sqrt(slots["accum_update"][rows] + epsilon) / np.sqrt(accum + epsilon) * g
    slots["accum"][rows] = accum
    slots["accum_update"][rows] = slots["accum_update"][rows] * rho + (1.0 - rho) * update * update
    value[rows] -= (learning_rate * update).astype(value.dtype)


def adadelta_slots(value, **hyper):
    return {"accum": np.zeros_like(value), "accum_update": np.zeros_like(value)}


RULES = {
    "rmsprop": (rmsprop, rmsprop_slots),
    "adadelta": (adadelta, adadelta_slots),
    "sgd": (sgd, sgd_slots),
    "ftrl": (ftrl, ftrl_slots),
    "momentum": (momentum, momentum_slots),
    "adagrad": (adagrad, adagrad_slots),
    "adam": (adam, adam_slots),
}


def checked_slots(rule, slots, shape, dtype, what):
    """`slots` ({slot name: array}, a checkpoint's slots of one variable for `rule`) as the
    rule needs them for a variable of `shape` and `dtype`: every slot the rule keeps, none
    else, each shaped like the variable (or a scalar, as Adam's step count), each of the
    dtype the rule makes it (another width of the same kind is cast). InvalidArgumentError
    naming `what` (the variable) and the slot otherwise."""
    if rule not in RULES:
        raise InvalidArgumentError(f"slots of {what}: unknown update rule {rule!r}; known: "
                                   f"{', '.join(sorted(RULES))}")
    # The rule's slots for an empty value tell their names, dtypes and which are per-row.
    layout = RULES[rule][1](np.empty((0,), dtype))
    missing = sorted(set(layout) - set(slots))
    extra = sorted(set(slots) - set(layout))
    if missing or extra:
        raise InvalidArgumentError(
            f"slots of {what} for {rule}: " + "; ".join(
                part for part in (f"missing {', '.join(missing)}" if missing else "",
                                  f"unknown {', '.join(extra)}" if extra else "") if part) +
            f" (the rule keeps {', '.join(sorted(layout)) or 'none'})")
    out = {}
    for name, probe in layout.items():
        array = np.asarray(slots[name])
        expected = tuple(shape) if probe.shape == (0,) else ()
        if array.shape != expected:
            raise InvalidArgumentError(f"slot {rule}/{name} of {what} has shape "
                                       f"{array.shape}, expected {expected}")
        if array.dtype != probe.dtype:
            if array.dtype.kind != probe.dtype.kind:
                raise InvalidArgumentError(f"slot {rule}/{name} of {what} has dtype "
                                           f"{array.dtype.name}, expected {probe.dtype.name}")
            array = array.astype(probe.dtype)
        out[name] = np.array(array)  # owned and writable: the rule updates it in place
    return out


def checked_slots_by_variable(slots):
    """{(variable, rule): {slot name: array}} of a checkpoint's slots {(variable, rule, slot):
    array}, where a variable is anything with a name, shape and dtype: each variable's slots
    for each rule checked by checked_slots. Raises before returning anything."""
    grouped = {}
    for (var, rule, slot), array in slots.items():
        grouped.setdefault((var, rule), {})[slot] = array
    return {(var, rule): checked_slots(rule, given, var.shape, var.dtype, repr(var.name))
            for (var, rule), given in grouped.items()}


class UpdateRule:
    """A named rule with its hyperparameters bound; `spec()` is what travels to a parameter
    server, which rebuilds the same rule with `UpdateRule(**spec)`."""

    def __init__(self, name, **hyper):
        if name not in RULES:
            raise ValueError(f"unknown update rule {name!r}; known: {', '.join(sorted(RULES))}")
        self.name = name
        self.hyper = {k: (bool(v) if isinstance(v, bool) else float(v)) for k, v in hyper.items()}
        self._apply, self._init_slots = RULES[name]

    def with_hyper(self, **changes):
        """The same rule with some hyperparameters changed (a scheduled learning rate)."""
        return UpdateRule(self.name, **{**self.hyper, **changes})

    def init_slots(self, value):
        """The rule's optimizer slots for `value` (e.g. Adam's moments), freshly made."""
        return self._init_slots(value, **self.hyper)

    def slots_of(self, by_rule, value):
        """The rule's slots for `value` in `by_rule` ({rule name: slots}, one variable's),
        made there at the rule's first push to that variable."""
        slots = by_rule.get(self.name)
        if slots is None:
            slots = by_rule[self.name] = self._init_slots(value, **self.hyper)
        return slots

    def apply(self, value, grad, slots):
        """Updates `value` and `slots` in place with `grad`."""
        self._apply(value, grad, slots, **self.hyper)

    def spec(self):
        return {"name": self.name, **self.hyper}

    def __repr__(self):
        return f"UpdateRule({self.name!r}, {self.hyper})"
