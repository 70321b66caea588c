"""`psflow.nn`: activations, losses, convolution and pooling (TensorFlow's `tf.nn`)."""

from .conv_ops import avg_pool, conv2d, max_pool
from .embedding_ops import embedding_lookup
from .more_ops import dropout, elu, leaky_relu, moments, xw_plus_b
from .sparse_ops import embedding_lookup_sparse
from .nn_ops import (bias_add, l2_loss, relu, sigmoid, sigmoid_cross_entropy_with_logits,
                     softmax, softmax_cross_entropy_with_logits,
                     sparse_softmax_cross_entropy_with_logits, tanh,
                     weighted_cross_entropy_with_logits)

softmax_cross_entropy_with_logits_v2 = softmax_cross_entropy_with_logits

__all__ = [
    "dropout", "elu", "leaky_relu", "moments", "softmax_cross_entropy_with_logits_v2",
    "xw_plus_b",
    "avg_pool", "bias_add", "conv2d", "embedding_lookup", "embedding_lookup_sparse", "l2_loss", "max_pool",
    "relu", "sigmoid",
    "sigmoid_cross_entropy_with_logits", "softmax", "softmax_cross_entropy_with_logits",
    "sparse_softmax_cross_entropy_with_logits", "tanh", "weighted_cross_entropy_with_logits",
]


def __getattr__(name):
    from .unimplemented import refuse
    raise refuse("tf.nn", name)
