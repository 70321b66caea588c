"""TF1's learning-rate schedules: scalar tensors of the global step, to pass as an
optimizer's learning_rate (computed at each training run)."""

import numpy as np

from ..graph import Node, convert_to_tensor


class _Schedule(Node):
    def __init__(self, step, fn, name):
        self.fn = fn
        step = convert_to_tensor(step)
        super().__init__((step,), name=name, shape=(), dtype=np.dtype(np.float32))

    def forward(self, step):
        return np.float32(self.fn(float(step)))


def exponential_decay(learning_rate, global_step, decay_steps, decay_rate, staircase=False,
                      name=None):
    """learning_rate * decay_rate ^ (global_step / decay_steps), the exponent floored with
    staircase."""
    if decay_steps <= 0:
        raise ValueError(f"exponential_decay: decay_steps must be positive, got {decay_steps}")

    def rate(step):
        power = step / decay_steps
        return learning_rate * decay_rate ** (np.floor(power) if staircase else power)
    return _Schedule(global_step, rate, name or "ExponentialDecay")


def inverse_time_decay(learning_rate, global_step, decay_steps, decay_rate, staircase=False,
                       name=None):
    def rate(step):
        power = step / decay_steps
        return learning_rate / (1 + decay_rate * (np.floor(power) if staircase else power))
    return _Schedule(global_step, rate, name or "InverseTimeDecay")


def piecewise_constant(x, boundaries, values, name=None):
    """values[0] while x <= boundaries[0], values[1] while x <= boundaries[1], ...,
    values[-1] after the last boundary."""
    boundaries, values = list(boundaries), list(values)
    if len(values) != len(boundaries) + 1:
        raise ValueError(f"piecewise_constant: {len(boundaries)} boundaries need "
                         f"{len(boundaries) + 1} values, got {len(values)}")
    if boundaries != sorted(boundaries):
        raise ValueError(f"piecewise_constant: boundaries must increase, got {boundaries}")

    def rate(step):
        return values[int(np.searchsorted(boundaries, step, side="left"))]
    return _Schedule(x, rate, name or "PiecewiseConstant")
