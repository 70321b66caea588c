"""`tf.layers`: TF1's functional layers on psflow's ops. Each layer makes its variables with
get_variable inside its own variable scope (`dense`, `dense_1`, ... or `name`), so `reuse`
shares them as in TF1."""

import numpy as np

from .conv_ops import avg_pool, max_pool
from .conv_ops import conv2d as _conv2d
from .graph import Node, convert_to_tensor
from .initializers import (
    get_variable,
    glorot_uniform_initializer,
    ones_initializer,
    variable_scope,
    zeros_initializer,
)
from .math_ops import add, cast, matmul, multiply, sqrt, subtract
from .nn_ops import dropout as _dropout
from .nn_ops import moments
from .shape_ops import reshape
from .unimplemented import refuse as _refuse
from .variables import GraphKeys, add_to_collection


def _pair(value, what):
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"{what} must be an int or two ints, got {value}")
    return value


def _padding(padding):
    padding = str(padding).upper()
    if padding not in ("SAME", "VALID"):
        raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
    return padding


def _kernel(shape, dtype, initializer, trainable):
    """A layer's "kernel" variable, glorot-uniform unless `initializer` says otherwise."""
    return get_variable("kernel", shape=shape, dtype=dtype,
                        initializer=initializer or glorot_uniform_initializer(),
                        trainable=trainable)


def _bias_and_activation(out, size, use_bias, initializer, activation, trainable):
    """`out` plus a "bias" variable of `size` (zeros unless `initializer` says otherwise)
    when `use_bias`, through `activation` when there is one."""
    if use_bias:
        bias = get_variable("bias", shape=(size,), dtype=out.dtype,
                            initializer=initializer or zeros_initializer(), trainable=trainable)
        out = add(out, bias)
    return activation(out) if activation is not None else out


def dense(inputs, units, activation=None, use_bias=True, kernel_initializer=None,
          bias_initializer=None, trainable=True, name=None, reuse=None, **unsupported):
    """activation(inputs @ kernel + bias) with kernel (in, units) and bias (units,)."""
    if unsupported:
        raise NotImplementedError(f"layers.dense: {', '.join(sorted(unsupported))} not "
                                  "supported")
    inputs = convert_to_tensor(inputs)
    if inputs.shape is None or inputs.shape[-1] is None:
        raise ValueError(f"layers.dense: the last dimension of {inputs.name!r} must be known, "
                         f"got shape {inputs.shape}")
    with variable_scope(name, default_name="dense", reuse=reuse):
        kernel = _kernel((int(inputs.shape[-1]), int(units)), inputs.dtype, kernel_initializer,
                         trainable)
        out = matmul(inputs, kernel)
        return _bias_and_activation(out, int(units), use_bias, bias_initializer, activation,
                                    trainable)


def conv2d(inputs, filters, kernel_size, strides=(1, 1), padding="valid", activation=None,
           use_bias=True, kernel_initializer=None, bias_initializer=None, trainable=True,
           name=None, reuse=None, data_format="channels_last", **unsupported):
    """NHWC convolution with a (kh, kw, in, filters) kernel and a bias per filter."""
    if unsupported:
        raise NotImplementedError(f"layers.conv2d: {', '.join(sorted(unsupported))} not "
                                  "supported")
    if data_format != "channels_last":
        raise NotImplementedError("layers.conv2d: only data_format='channels_last' (NHWC)")
    inputs = convert_to_tensor(inputs)
    if inputs.shape is None or inputs.shape[-1] is None:
        raise ValueError(f"layers.conv2d: the channels of {inputs.name!r} must be known")
    kh, kw = _pair(kernel_size, "kernel_size")
    with variable_scope(name, default_name="conv2d", reuse=reuse):
        kernel = _kernel((kh, kw, int(inputs.shape[-1]), int(filters)), inputs.dtype,
                         kernel_initializer, trainable)
        out = _conv2d(inputs, kernel, list(_pair(strides, "strides")), _padding(padding))
        return _bias_and_activation(out, int(filters), use_bias, bias_initializer, activation,
                                    trainable)


def max_pooling2d(inputs, pool_size, strides, padding="valid", data_format="channels_last",
                  name=None):
    if data_format != "channels_last":
        raise NotImplementedError("layers.max_pooling2d: only data_format='channels_last'")
    return max_pool(inputs, list(_pair(pool_size, "pool_size")),
                    list(_pair(strides, "strides")), _padding(padding), name=name)


def average_pooling2d(inputs, pool_size, strides, padding="valid",
                      data_format="channels_last", name=None):
    if data_format != "channels_last":
        raise NotImplementedError("layers.average_pooling2d: only data_format='channels_last'")
    return avg_pool(inputs, list(_pair(pool_size, "pool_size")),
                    list(_pair(strides, "strides")), _padding(padding), name=name)


def batch_normalization(inputs, axis=-1, momentum=0.99, epsilon=1e-3, center=True,
                        scale=True, beta_initializer=None, gamma_initializer=None,
                        moving_mean_initializer=None, moving_variance_initializer=None,
                        training=False, trainable=True, name=None, reuse=None,
                        **unsupported):
    """TF1's batch normalization over every axis but `axis`. While `training` (a bool, or a
    bool tensor fed per run) it normalizes with the batch's moments and puts the ops that
    update `moving_mean` and `moving_variance` into GraphKeys.UPDATE_OPS (run them with
    `tf.control_dependencies`, as in TF1); otherwise it uses the moving moments."""
    if unsupported:
        raise NotImplementedError(f"layers.batch_normalization: "
                                  f"{', '.join(sorted(unsupported))} not supported")
    inputs = convert_to_tensor(inputs)
    if inputs.shape is None:
        raise ValueError(f"layers.batch_normalization: the rank of {inputs.name!r} must be "
                         "known")
    rank = len(inputs.shape)
    axis = axis % rank
    if inputs.shape[axis] is None:
        raise ValueError(f"layers.batch_normalization: dimension {axis} of {inputs.name!r} "
                         "must be known")
    depth = int(inputs.shape[axis])
    reduce_axes = [i for i in range(rank) if i != axis]
    shape = [1] * rank
    shape[axis] = depth
    dtype = inputs.dtype
    with variable_scope(name, default_name="batch_normalization", reuse=reuse):
        gamma = get_variable("gamma", shape=(depth,), dtype=dtype,
                             initializer=gamma_initializer or ones_initializer(),
                             trainable=trainable) if scale else None
        beta = get_variable("beta", shape=(depth,), dtype=dtype,
                            initializer=beta_initializer or zeros_initializer(),
                            trainable=trainable) if center else None
        moving_mean = get_variable("moving_mean", shape=(depth,), dtype=dtype,
                                   initializer=moving_mean_initializer or zeros_initializer(),
                                   trainable=False)
        moving_variance = get_variable(
            "moving_variance", shape=(depth,), dtype=dtype,
            initializer=moving_variance_initializer or ones_initializer(), trainable=False)

        def normalize(mean, variance):
            out = (inputs - reshape(mean, shape)) / sqrt(reshape(variance, shape) + epsilon)
            if gamma is not None:
                out = out * reshape(gamma, shape)
            if beta is not None:
                out = out + reshape(beta, shape)
            return out

        if training is False or training is None:
            return normalize(moving_mean, moving_variance)
        mean, variance = moments(inputs, reduce_axes)
        batch = normalize(mean, variance)
        if training is True:
            decay, out = 1.0 - momentum, batch
        else:  # a tensor: both ways are computed, the fed value picks one
            on = cast(training, dtype)
            decay = on * (1.0 - momentum)
            out = batch * on + normalize(moving_mean, moving_variance) * (1.0 - on)
        for var, value in ((moving_mean, mean), (moving_variance, variance)):
            add_to_collection(GraphKeys.UPDATE_OPS,
                              var.assign_sub(multiply(subtract(var, value), decay)))
        return out


def flatten(inputs, name=None):
    """(batch, everything else)."""
    inputs = convert_to_tensor(inputs)
    if inputs.shape is None or None in inputs.shape[1:]:
        raise ValueError(f"layers.flatten: the dimensions after the first of {inputs.name!r} "
                         f"must be known, got {inputs.shape}")
    return reshape(inputs, (-1, int(np.prod(inputs.shape[1:], dtype=np.int64))), name=name)


def dropout(inputs, rate=0.5, noise_shape=None, seed=None, training=False, name=None):
    """Dropout only while `training` (a bool, or a bool tensor fed per run)."""
    if isinstance(training, Node):
        return _dropout(inputs, rate=cast(training, np.float32) * float(rate),
                        noise_shape=noise_shape, seed=seed, name=name)
    if not training:
        return convert_to_tensor(inputs)
    return _dropout(inputs, rate=float(rate), noise_shape=noise_shape, seed=seed, name=name)


def __getattr__(name):
    raise _refuse("tf.layers", name)
