"""Clipping: clip_by_value (elementwise), and global_norm / clip_by_global_norm, which scale
a list of gradients together."""

import numpy as np

from .elementwise import NumpyFn, Unary
from .gradient_registry import register_gradient
from .math_ops import maximum, sqrt, square
from .reduction_ops import reduce_sum


class _Clip(Unary):
    def __init__(self, x, low, high, name=None):
        self.low, self.high = float(low), float(high)
        if self.low > self.high:
            raise ValueError(f"clip_by_value: clip_value_min {low} is above clip_value_max "
                             f"{high}")
        super().__init__(x, name=name or "clip_by_value")

    def forward(self, x):
        return np.clip(x, self.low, self.high)


@register_gradient(_Clip)
def _clip_grad(op, grad):
    x = op.inputs[0]
    return [NumpyFn(lambda v, g: g * ((v >= op.low) & (v <= op.high)), (x, grad), x.shape,
                    grad.dtype, "ClipGrad")]


def clip_by_value(t, clip_value_min, clip_value_max, name=None):
    return _Clip(t, clip_value_min, clip_value_max, name)


def global_norm(t_list, name=None):
    """sqrt(sum of the squares of every element of the tensors of `t_list`; Nones skipped)."""
    squares = [reduce_sum(square(t)) for t in t_list if t is not None]
    total = squares[0]
    for node in squares[1:]:
        total = total + node
    return sqrt(total, name=name)


def clip_by_global_norm(t_list, clip_norm, use_norm=None, name=None):
    """(the tensors scaled by clip_norm / max(global norm, clip_norm), the global norm)."""
    t_list = list(t_list)
    norm = use_norm if use_norm is not None else global_norm(t_list)
    scale = clip_norm / maximum(norm, clip_norm)
    return [None if t is None else t * scale for t in t_list], norm
