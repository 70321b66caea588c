"""Convolution and pooling (`psflow.nn.conv2d`, `max_pool`) in NHWC layout; gradients beside
each op. Both view the padded input as windows of shape (N, out_h, out_w, kernel_h,
kernel_w, C) without copying (as_strided), then reduce."""

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .errors import InvalidArgumentError
from .gradient_registry import register_gradient
from .graph import Node, convert_to_tensor
from .shapes import format_shape


def _pair(value, what):
    """Accepts an int, a pair, or TensorFlow's 4-element NHWC form [1, h, w, 1]."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    value = tuple(int(v) for v in value)
    if len(value) == 2:
        return value
    if len(value) == 4 and value[0] == 1 and value[3] == 1:
        return value[1], value[2]
    raise ValueError(f"{what} must be an int, [h, w] or [1, h, w, 1], got {list(value)}")


def _padding_1d(size, kernel, stride, padding):
    if padding == "VALID":
        out = (size - kernel) // stride + 1
        return out, 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


class _Window:
    """Output size and padding of a sliding window over (H, W)."""

    def __init__(self, in_h, in_w, kh, kw, strides, padding):
        if padding not in ("SAME", "VALID"):
            raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
        self.kh, self.kw = kh, kw
        self.sh, self.sw = strides
        self.out_h, self.top, self.bottom = _padding_1d(in_h, kh, self.sh, padding)
        self.out_w, self.left, self.right = _padding_1d(in_w, kw, self.sw, padding)
        if self.out_h <= 0 or self.out_w <= 0:
            raise InvalidArgumentError(f"a {kh}x{kw} window does not fit an input of "
                                       f"{in_h}x{in_w} with VALID padding")

    def pad(self, x, fill=0.0):
        if not (self.top or self.bottom or self.left or self.right):
            return x
        return np.pad(x, ((0, 0), (self.top, self.bottom), (self.left, self.right), (0, 0)),
                      constant_values=fill)

    def windows(self, padded):
        n, _, _, c = padded.shape
        s0, s1, s2, s3 = padded.strides
        return as_strided(padded, shape=(n, self.out_h, self.out_w, self.kh, self.kw, c),
                          strides=(s0, s1 * self.sh, s2 * self.sw, s1, s2, s3),
                          writeable=False)

    def scatter(self, cols, padded_shape, dtype):
        """Adds window-shaped values back onto the padded input grid, then crops the padding."""
        out = np.zeros(padded_shape, dtype=dtype)
        for i in range(self.kh):
            for j in range(self.kw):
                out[:, i:i + self.sh * self.out_h:self.sh,
                    j:j + self.sw * self.out_w:self.sw, :] += cols[:, :, :, i, j, :]
        h, w = padded_shape[1], padded_shape[2]
        return out[:, self.top:h - self.bottom, self.left:w - self.right, :]


def _check_nhwc(x, what):
    if x.ndim != 4:
        raise InvalidArgumentError(f"{what} expects a 4-D NHWC input, got shape {x.shape}")


class Conv2D(Node):
    """2-D convolution: input (N, H, W, C), filter (KH, KW, C, O) -> (N, OH, OW, O)."""

    def __init__(self, x, filters, strides, padding, name=None):
        x, filters = convert_to_tensor(x), convert_to_tensor(filters)
        self.strides, self.padding = _pair(strides, "strides"), padding
        shape = None
        if x.shape is not None and filters.shape is not None:
            if len(x.shape) != 4 or len(filters.shape) != 4:
                raise ValueError(f"conv2d needs a 4-D input and filter, got "
                                 f"{format_shape(x.shape)} and {format_shape(filters.shape)}")
            if None not in (x.shape[3], filters.shape[2]) and x.shape[3] != filters.shape[2]:
                raise ValueError(f"conv2d: input has {x.shape[3]} channels but the filter "
                                 f"expects {filters.shape[2]}")
            dims = [None, None]
            for k, (size, kernel, stride) in enumerate(zip(x.shape[1:3], filters.shape[:2],
                                                           self.strides, strict=True)):
                if size is not None and kernel is not None:
                    dims[k] = _padding_1d(size, kernel, stride, padding)[0]
            shape = (x.shape[0], dims[0], dims[1], filters.shape[3])
        super().__init__((x, filters), name=name, shape=shape,
                         dtype=np.result_type(x.dtype, filters.dtype))

    def window(self, x, filters):
        _check_nhwc(x, "conv2d")
        return _Window(x.shape[1], x.shape[2], filters.shape[0], filters.shape[1],
                       self.strides, self.padding)

    def forward(self, x, filters):
        if x.shape[3] != filters.shape[2]:
            raise InvalidArgumentError(f"conv2d: input has {x.shape[3]} channels but the "
                                       f"filter expects {filters.shape[2]}")
        win = self.window(x, filters)
        cols = win.windows(win.pad(x))
        return np.tensordot(cols, filters, axes=([3, 4, 5], [0, 1, 2]))


class Conv2DBackpropInput(Node):
    def __init__(self, grad, x, filters, conv):
        self.conv = conv
        super().__init__((grad, x, filters), shape=x.shape, dtype=grad.dtype)

    def forward(self, grad, x, filters):
        win = self.conv.window(x, filters)
        cols = np.tensordot(grad, filters, axes=([3], [3]))  # (N, OH, OW, KH, KW, C)
        padded_shape = (x.shape[0], x.shape[1] + win.top + win.bottom,
                        x.shape[2] + win.left + win.right, x.shape[3])
        return win.scatter(cols, padded_shape, grad.dtype)


class Conv2DBackpropFilter(Node):
    def __init__(self, grad, x, filters, conv):
        self.conv = conv
        super().__init__((grad, x, filters), shape=filters.shape, dtype=grad.dtype)

    def forward(self, grad, x, filters):
        win = self.conv.window(x, filters)
        cols = win.windows(win.pad(x))
        return np.tensordot(cols, grad, axes=([0, 1, 2], [0, 1, 2]))


@register_gradient(Conv2D)
def _conv2d_grad(op, grad):
    x, filters = op.inputs
    return [Conv2DBackpropInput(grad, x, filters, op),
            Conv2DBackpropFilter(grad, x, filters, op)]


class MaxPool(Node):
    """Max over (KH, KW) windows of an NHWC input."""

    def __init__(self, x, ksize, strides, padding, name=None):
        x = convert_to_tensor(x)
        self.ksize = _pair(ksize, "ksize")
        self.strides, self.padding = _pair(strides, "strides"), padding
        shape = None
        if x.shape is not None:
            if len(x.shape) != 4:
                raise ValueError(f"{type(self).__name__} needs a 4-D NHWC input, got "
                                 f"{format_shape(x.shape)}")
            dims = [None if size is None else _padding_1d(size, k, s, padding)[0]
                    for size, k, s in zip(x.shape[1:3], self.ksize, self.strides, strict=True)]
            shape = (x.shape[0], dims[0], dims[1], x.shape[3])
        super().__init__((x,), name=name, shape=shape, dtype=x.dtype)

    def window(self, x):
        _check_nhwc(x, type(self).__name__)
        return _Window(x.shape[1], x.shape[2], self.ksize[0], self.ksize[1], self.strides,
                       self.padding)

    def forward(self, x):
        win = self.window(x)
        return win.windows(win.pad(x, -np.inf)).max(axis=(3, 4))


class MaxPoolGrad(Node):
    """Routes each window's gradient to the position of its maximum (the first, on ties)."""

    def __init__(self, grad, x, pool):
        self.pool = pool
        super().__init__((grad, x), shape=x.shape, dtype=grad.dtype)

    def forward(self, grad, x):
        win = self.pool.window(x)
        padded = win.pad(x, -np.inf)
        cols = win.windows(padded)
        n, oh, ow, kh, kw, c = cols.shape
        winner = cols.reshape(n, oh, ow, kh * kw, c).argmax(axis=3)
        routed = np.zeros(cols.shape, dtype=grad.dtype)
        for i in range(kh):
            for j in range(kw):
                routed[:, :, :, i, j, :] = np.where(winner == i * kw + j, grad, 0)
        return win.scatter(routed, padded.shape, grad.dtype)


@register_gradient(MaxPool)
def _max_pool_grad(op, grad):
    return [MaxPoolGrad(grad, op.inputs[0], op)]


class AvgPool(MaxPool):
    """Mean over (KH, KW) windows of an NHWC input; with SAME padding a window averages only
    the input cells it covers, as TensorFlow's does."""

    def counts(self, win, x):
        ones = np.ones((1, x.shape[1], x.shape[2], 1), dtype=x.dtype)
        return win.windows(win.pad(ones, 0.0)).sum(axis=(3, 4))

    def forward(self, x):
        win = self.window(x)
        return win.windows(win.pad(x, 0.0)).sum(axis=(3, 4)) / self.counts(win, x)


class AvgPoolGrad(Node):
    """Spreads each window's gradient evenly over the input cells it covers."""

    def __init__(self, grad, x, pool):
        self.pool = pool
        super().__init__((grad, x), shape=x.shape, dtype=grad.dtype)

    def forward(self, grad, x):
        win = self.pool.window(x)
        share = grad / self.pool.counts(win, x)
        cols = np.broadcast_to(share[:, :, :, None, None, :],
                               share.shape[:3] + (win.kh, win.kw) + share.shape[3:])
        padded_shape = (x.shape[0], x.shape[1] + win.top + win.bottom,
                        x.shape[2] + win.left + win.right, x.shape[3])
        return win.scatter(cols, padded_shape, grad.dtype)


@register_gradient(AvgPool)
def _avg_pool_grad(op, grad):
    return [AvgPoolGrad(grad, op.inputs[0], op)]


# Public functions, TF1 names (psflow.nn.*).

def conv2d(input, filter, strides, padding, name=None):  # noqa: A002 -- TF1's argument names
    """NHWC convolution; `strides` is an int, [h, w] or [1, h, w, 1]; padding 'SAME'/'VALID'."""
    return Conv2D(input, filter, strides, padding, name=name)


def max_pool(value, ksize, strides, padding, name=None):
    """NHWC max pooling; `ksize`/`strides` are ints, [h, w] or [1, h, w, 1]."""
    return MaxPool(value, ksize, strides, padding, name=name)


def avg_pool(value, ksize, strides, padding, name=None):
    """NHWC average pooling; `ksize`/`strides` are ints, [h, w] or [1, h, w, 1]."""
    return AvgPool(value, ksize, strides, padding, name=name)
