"""`psflow.nn`: activations, losses, convolution and pooling (TensorFlow's `tf.nn`)."""

from .conv_ops import avg_pool, conv2d, max_pool
from .embedding_ops import embedding_lookup
from .nn_ops import (
    bias_add,
    dropout,
    elu,
    l2_loss,
    leaky_relu,
    moments,
    relu,
    sigmoid,
    sigmoid_cross_entropy_with_logits,
    softmax,
    softmax_cross_entropy_with_logits,
    sparse_softmax_cross_entropy_with_logits,
    tanh,
    weighted_cross_entropy_with_logits,
    xw_plus_b,
)
from .sparse_ops import embedding_lookup_sparse
from .unimplemented import refuse as _refuse

softmax_cross_entropy_with_logits_v2 = softmax_cross_entropy_with_logits

__all__ = [
    "avg_pool", "bias_add", "conv2d", "dropout", "elu", "embedding_lookup",
    "embedding_lookup_sparse", "l2_loss", "leaky_relu", "max_pool", "moments", "relu", "sigmoid",
    "sigmoid_cross_entropy_with_logits", "softmax", "softmax_cross_entropy_with_logits",
    "softmax_cross_entropy_with_logits_v2", "sparse_softmax_cross_entropy_with_logits", "tanh",
    "weighted_cross_entropy_with_logits", "xw_plus_b",
]


def __getattr__(name):
    raise _refuse("tf.nn", name)
