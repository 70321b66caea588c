"""The gradient registry, keyed by op class: each op module registers an op's gradient next to
its forward (`@register_gradient(Op)`); `gradients()` (psflow.gradients, above the ops) looks
them up.

A gradient function takes the op and the gradient flowing into its output (a node) and returns
one gradient node (or None) per input.
"""

from .errors import NoGradientError

_GRADIENTS = {}


def register_gradient(op_class):
    """Decorator: registers the decorated function as the gradient of `op_class`."""
    def decorate(fn):
        _GRADIENTS[op_class] = fn
        return fn
    return decorate


def gradient_function(node):
    """The gradient function registered for `node`'s op class; NoGradientError naming the op
    when there is none."""
    grad_fn = _GRADIENTS.get(type(node))
    if grad_fn is None:
        raise NoGradientError(
            f"no gradient is defined for op {node.name!r} (type {type(node).__name__}); "
            "it lies on the path from the loss to the variables")
    return grad_fn
