"""Neural-network ops (`psflow.nn`): activations, dropout, softmax and cross-entropy losses,
moments; gradients beside each op. Convolution and pooling are in conv_ops."""

import numpy as np

from .dtypes import float32
from .elementwise import NumpyFn, Unary, unary_op_class
from .errors import InvalidArgumentError
from .gradient_registry import register_gradient
from .graph import Node, convert_to_tensor
from .initializers import random_generator
from .math_ops import add, matmul, square
from .reduction_ops import reduce_mean, reduce_sum
from .shapes import format_shape


class Sigmoid(Unary):
    def forward(self, x):
        # tanh form: no overflow for large |x|, one transcendental per element.
        return 0.5 * (1.0 + np.tanh(0.5 * x))


class SigmoidGrad(Node):
    def __init__(self, y, grad):
        super().__init__((y, grad), shape=y.shape, dtype=y.dtype)

    def forward(self, y, grad):
        return grad * y * (1.0 - y)


@register_gradient(Sigmoid)
def _sigmoid_grad(op, grad):
    return [SigmoidGrad(op, grad)]


class Tanh(Unary):
    def forward(self, x):
        return np.tanh(x)


class TanhGrad(Node):
    def __init__(self, y, grad):
        super().__init__((y, grad), shape=y.shape, dtype=y.dtype)

    def forward(self, y, grad):
        return grad * (1.0 - y * y)


@register_gradient(Tanh)
def _tanh_grad(op, grad):
    return [TanhGrad(op, grad)]


class Relu(Unary):
    def forward(self, x):
        return np.maximum(x, 0)


class ReluGrad(Node):
    def __init__(self, grad, y):
        super().__init__((grad, y), shape=y.shape, dtype=y.dtype)

    def forward(self, grad, y):
        return grad * (y > 0)


@register_gradient(Relu)
def _relu_grad(op, grad):
    return [ReluGrad(grad, op)]


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


def _log_softmax(x, axis=-1):
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


class Softmax(Unary):
    def forward(self, x):
        return _softmax(x)


class SoftmaxGrad(Node):
    def __init__(self, grad, y):
        super().__init__((grad, y), shape=y.shape, dtype=y.dtype)

    def forward(self, grad, y):
        gy = grad * y
        return gy - y * np.sum(gy, axis=-1, keepdims=True)


@register_gradient(Softmax)
def _softmax_grad(op, grad):
    return [SoftmaxGrad(grad, op)]


class SoftmaxCrossEntropyWithLogits(Node):
    """Per-example `-sum(labels * log_softmax(logits))` over the last axis, computed stably."""

    def __init__(self, labels, logits, name=None):
        labels = convert_to_tensor(labels, dtype=getattr(logits, "dtype", None))
        logits = convert_to_tensor(logits)
        if labels.shape is not None and logits.shape is not None:
            if len(labels.shape) != len(logits.shape) or any(
                    a is not None and b is not None and a != b
                    for a, b in zip(labels.shape, logits.shape, strict=True)):
                raise ValueError(f"softmax_cross_entropy_with_logits: labels of shape "
                                 f"{format_shape(labels.shape)} do not match logits of shape "
                                 f"{format_shape(logits.shape)}")
        shape = None if logits.shape is None else logits.shape[:-1]
        super().__init__((labels, logits), name=name, shape=shape, dtype=logits.dtype)

    def forward(self, labels, logits):
        return -np.sum(labels * _log_softmax(logits), axis=-1)


class SoftmaxCrossEntropyGrad(Node):
    """Gradient for logits (`wrt="logits"`: softmax - labels) or labels (-log_softmax), scaled
    by the incoming per-example gradient."""

    def __init__(self, grad, labels, logits, wrt):
        self.wrt = wrt
        like = logits if wrt == "logits" else labels
        super().__init__((grad, labels, logits), shape=like.shape, dtype=like.dtype)

    def forward(self, grad, labels, logits):
        if self.wrt == "logits":
            local = _softmax(logits) - labels
        else:
            local = -_log_softmax(logits)
        return np.expand_dims(grad, -1) * local


@register_gradient(SoftmaxCrossEntropyWithLogits)
def _softmax_xent_grad(op, grad):
    labels, logits = op.inputs
    return [SoftmaxCrossEntropyGrad(grad, labels, logits, "labels"),
            SoftmaxCrossEntropyGrad(grad, labels, logits, "logits")]


def _check_labels(labels, classes):
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        bad = labels[(labels < 0) | (labels >= classes)].flat[0]
        raise InvalidArgumentError(
            f"sparse_softmax_cross_entropy_with_logits: label {bad} is outside the valid range "
            f"[0, {classes})")


def _pick_classes(values, labels):
    """`values[..., labels]` elementwise: the entry of each example's class."""
    rows = values.reshape(-1, values.shape[-1])
    return rows[np.arange(len(rows)), labels.reshape(-1)].reshape(labels.shape)


class SparseSoftmaxCrossEntropyWithLogits(Node):
    """Per-example cross-entropy with integer class `labels` (shape logits.shape[:-1])."""

    def __init__(self, labels, logits, name=None):
        labels, logits = convert_to_tensor(labels), convert_to_tensor(logits)
        if labels.dtype is not None and labels.dtype.kind not in "iu":
            raise TypeError(f"sparse_softmax_cross_entropy_with_logits: labels must be "
                            f"integer class ids, {labels.name!r} is {labels.dtype.name}")
        shape = None if logits.shape is None else logits.shape[:-1]
        super().__init__((labels, logits), name=name, shape=shape, dtype=logits.dtype)

    def forward(self, labels, logits):
        _check_labels(labels, logits.shape[-1])
        # -log_softmax at the label, without forming log_softmax for every class.
        shifted = logits - logits.max(axis=-1, keepdims=True)
        return np.log(np.exp(shifted).sum(axis=-1)) - _pick_classes(shifted, labels)


class SparseSoftmaxCrossEntropyGrad(Node):
    def __init__(self, grad, labels, logits):
        super().__init__((grad, labels, logits), shape=logits.shape, dtype=logits.dtype)

    def forward(self, grad, labels, logits):
        local = _softmax(logits)
        rows = local.reshape(-1, local.shape[-1])  # a view: _softmax returns a new array
        rows[np.arange(len(rows)), labels.reshape(-1)] -= 1
        return grad[..., None] * local


@register_gradient(SparseSoftmaxCrossEntropyWithLogits)
def _sparse_softmax_xent_grad(op, grad):
    labels, logits = op.inputs
    return [None, SparseSoftmaxCrossEntropyGrad(grad, labels, logits)]


class SigmoidCrossEntropyWithLogits(Node):
    """Elementwise `-z log(sigmoid(x)) - (1 - z) log(1 - sigmoid(x))` for labels z and logits
    x, with the positive class weighted by `pos_weight` (1: plain sigmoid cross-entropy):
    `(1 - z) x + (1 + (q - 1) z) softplus(-x)`, computed without overflow for any x."""

    def __init__(self, labels, logits, pos_weight=1.0, name=None):
        logits = convert_to_tensor(logits)
        labels = convert_to_tensor(labels, dtype=logits.dtype)
        if labels.shape is not None and logits.shape is not None and \
                len(labels.shape) == len(logits.shape) and any(
                    a is not None and b is not None and a != b
                    for a, b in zip(labels.shape, logits.shape, strict=True)):
            raise ValueError(f"sigmoid cross-entropy: labels of shape "
                             f"{format_shape(labels.shape)} do not match logits of shape "
                             f"{format_shape(logits.shape)}")
        self.pos_weight = float(pos_weight)
        super().__init__((labels, logits), name=name, shape=logits.shape, dtype=logits.dtype)

    def forward(self, labels, logits):
        weight = 1.0 + (self.pos_weight - 1.0) * labels
        return (1.0 - labels) * logits + weight * _softplus(-logits)


def _softplus(x):
    """log(1 + exp(x)) without overflow."""
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


class SigmoidCrossEntropyGrad(Node):
    """Gradient for logits (`(1 - z) - (1 + (q - 1) z) sigmoid(-x)`) or labels
    (`-x + (q - 1) softplus(-x)`), scaled by the incoming gradient."""

    def __init__(self, grad, labels, logits, pos_weight, wrt):
        self.pos_weight, self.wrt = pos_weight, wrt
        like = logits if wrt == "logits" else labels
        super().__init__((grad, labels, logits), shape=like.shape, dtype=like.dtype)

    def forward(self, grad, labels, logits):
        q = self.pos_weight
        if self.wrt == "logits":
            sigmoid_neg = 0.5 * (1.0 - np.tanh(0.5 * logits))
            local = (1.0 - labels) - (1.0 + (q - 1.0) * labels) * sigmoid_neg
        else:
            local = -logits + (q - 1.0) * _softplus(-logits)
        return grad * local


@register_gradient(SigmoidCrossEntropyWithLogits)
def _sigmoid_xent_grad(op, grad):
    labels, logits = op.inputs
    return [SigmoidCrossEntropyGrad(grad, labels, logits, op.pos_weight, "labels"),
            SigmoidCrossEntropyGrad(grad, labels, logits, op.pos_weight, "logits")]


# Public functions, TF1 names (psflow.nn.*).

def sigmoid(x, name=None):
    return Sigmoid(x, name=name)


def tanh(x, name=None):
    return Tanh(x, name=name)


def relu(x, name=None):
    return Relu(x, name=name)


def softmax(logits, name=None):
    return Softmax(logits, name=name)


def bias_add(value, bias, name=None):
    return add(value, bias, name=name)


def l2_loss(x, name=None):
    """sum(x ** 2) / 2, as TensorFlow defines it."""
    return reduce_sum(square(x)) * 0.5


def softmax_cross_entropy_with_logits(labels=None, logits=None, name=None):
    """Per-example cross-entropy between a distribution `labels` and `logits` (call with
    keyword arguments, as in TensorFlow)."""
    if labels is None or logits is None:
        raise ValueError("softmax_cross_entropy_with_logits needs labels= and logits=")
    return SoftmaxCrossEntropyWithLogits(labels, logits, name=name)


def sparse_softmax_cross_entropy_with_logits(labels=None, logits=None, name=None):
    """Per-example cross-entropy with integer class ids `labels` (keyword arguments)."""
    if labels is None or logits is None:
        raise ValueError("sparse_softmax_cross_entropy_with_logits needs labels= and logits=")
    return SparseSoftmaxCrossEntropyWithLogits(labels, logits, name=name)


def sigmoid_cross_entropy_with_logits(labels=None, logits=None, name=None):
    """Elementwise cross-entropy of independent binary labels (0..1) and `logits`, stable for
    any logit (keyword arguments, as in TensorFlow)."""
    if labels is None or logits is None:
        raise ValueError("sigmoid_cross_entropy_with_logits needs labels= and logits=")
    return SigmoidCrossEntropyWithLogits(labels, logits, name=name)


def weighted_cross_entropy_with_logits(labels=None, logits=None, pos_weight=None, name=None,
                                       targets=None):
    """sigmoid_cross_entropy_with_logits with the positive class's term weighted by
    `pos_weight` (TF1 also calls the labels `targets`)."""
    labels = targets if labels is None else labels
    if labels is None or logits is None or pos_weight is None:
        raise ValueError("weighted_cross_entropy_with_logits needs labels=, logits= and "
                         "pos_weight=")
    return SigmoidCrossEntropyWithLogits(labels, logits, pos_weight, name=name)


# -- leaky_relu, elu, dropout, xw_plus_b and moments: each op beside its public function ------

class _LeakyRelu(Unary):
    def __init__(self, x, alpha, name=None):
        self.alpha = float(alpha)
        super().__init__(x, name=name or "LeakyRelu")

    def forward(self, x):
        return np.where(x > 0, x, self.alpha * x).astype(x.dtype, copy=False)


@register_gradient(_LeakyRelu)
def _leaky_relu_grad(op, grad):
    x = op.inputs[0]
    return [NumpyFn(lambda v, g: np.where(v > 0, g, op.alpha * g), (x, grad), x.shape,
                    grad.dtype, "LeakyReluGrad")]


def leaky_relu(features, alpha=0.2, name=None):
    return _LeakyRelu(features, alpha, name)


Elu = unary_op_class("Elu", lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
                     lambda x, y, g: np.where(x > 0, g, g * (y + 1)))


def elu(features, name=None):
    return Elu(features, name=name)


class Dropout(Node):
    """Zeroes each element with probability `rate` and scales the rest by 1 / (1 - rate);
    `noise_shape` broadcasts one draw over axes. A fresh draw each run."""

    def __init__(self, x, rate, noise_shape, seed, name=None):
        x = convert_to_tensor(x)
        self.rate = convert_to_tensor(rate, dtype=x.dtype)
        self.noise_shape = None if noise_shape is None else tuple(noise_shape)
        self.rng = random_generator(seed)
        super().__init__((x, self.rate), name=name or "dropout", shape=x.shape, dtype=x.dtype)

    def forward(self, x, rate):
        rate = float(rate)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout: rate must be in [0, 1), got {rate}")
        shape = np.shape(x) if self.noise_shape is None else self.noise_shape
        keep = self.rng.random(shape) >= rate
        self.last_mask = keep / (1.0 - rate)
        return (x * self.last_mask).astype(x.dtype, copy=False)


@register_gradient(Dropout)
def _dropout_grad(op, grad):
    x = op.inputs[0]
    return [NumpyFn(lambda g: (g * op.last_mask).astype(g.dtype, copy=False), (grad,),
                    x.shape, grad.dtype, "DropoutGrad"), None]


def dropout(x, keep_prob=None, noise_shape=None, seed=None, name=None, rate=None):
    """TF1's nn.dropout (keep_prob, a float or a fed tensor) or TF2's (rate)."""
    if (keep_prob is None) == (rate is None):
        raise ValueError("dropout: give keep_prob or rate (one of them)")
    if rate is None:
        rate = 1.0 - convert_to_tensor(keep_prob, dtype=float32) if isinstance(
            keep_prob, Node) else 1.0 - float(keep_prob)
    return Dropout(x, rate, noise_shape, seed, name)


def xw_plus_b(x, weights, biases, name=None):
    return add(matmul(x, weights), biases, name=name)


def moments(x, axes, shift=None, name=None, keep_dims=None, keepdims=False):
    """(mean, variance) over `axes`."""
    keep = bool(keepdims if keep_dims is None else keep_dims)
    mean = reduce_mean(x, axis=axes, keepdims=True)
    variance = reduce_mean(square(x - mean), axis=axes, keepdims=keep)
    return (mean if keep else reduce_sum(mean, axis=axes)), variance
