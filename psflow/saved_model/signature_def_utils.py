"""Signatures: what a servable takes and returns. A `SignatureDef` maps keys to `TensorInfo`
(a graph node's name, dtype and static shape), as TF1's signature_def_utils builds them."""

import collections

import numpy as np

from ..errors import InvalidArgumentError
from ..graph import Node
from . import signature_constants

TensorInfo = collections.namedtuple("TensorInfo", "name dtype shape")
TensorInfo.__doc__ = """A tensor of a signature: `name` (the graph node's name), `dtype` (a
numpy dtype), `shape` (a tuple with None for unknown dimensions, or None when even the rank
is unknown)."""


def build_tensor_info(tensor):
    """The TensorInfo of a graph node (TF1's saved_model.utils.build_tensor_info)."""
    if isinstance(tensor, TensorInfo):
        return tensor
    if not isinstance(tensor, Node):
        raise TypeError(f"build_tensor_info takes a graph node, got {tensor!r}")
    if tensor.dtype is None:
        raise InvalidArgumentError(f"{tensor.name!r} has no value (an op run for its effect) "
                                   "and cannot be a signature's tensor")
    shape = None if tensor.shape is None else tuple(tensor.shape)
    return TensorInfo(tensor.name, np.dtype(tensor.dtype), shape)


class SignatureDef:
    """`method_name` and `inputs`, `outputs`: {key: TensorInfo}."""

    def __init__(self, inputs, outputs, method_name=signature_constants.PREDICT_METHOD_NAME):
        self.inputs = _infos(inputs, "inputs")
        self.outputs = _infos(outputs, "outputs")
        self.method_name = str(method_name)
        if not self.outputs:
            raise ValueError("a signature needs at least one output")

    def __repr__(self):
        return (f"SignatureDef(method_name={self.method_name!r}, "
                f"inputs={sorted(self.inputs)}, outputs={sorted(self.outputs)})")


def _infos(tensors, what):
    if not isinstance(tensors, dict):
        raise TypeError(f"a signature's {what} must be a dict {{key: tensor}}, got "
                        f"{type(tensors).__name__}")
    out = {}
    for key, tensor in tensors.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"a signature's {what} keys must be non-empty strings, got {key!r}")
        out[key] = build_tensor_info(tensor)
    return out


def build_signature_def(inputs=None, outputs=None,
                        method_name=signature_constants.PREDICT_METHOD_NAME):
    """A SignatureDef of {key: node or TensorInfo} inputs and outputs."""
    return SignatureDef(inputs or {}, outputs or {}, method_name)


def predict_signature_def(inputs, outputs):
    """A predict signature ("tensorflow/serving/predict") of {key: node} inputs and outputs."""
    if not inputs:
        raise ValueError("predict_signature_def: inputs must be a non-empty dict")
    return SignatureDef(inputs, outputs, signature_constants.PREDICT_METHOD_NAME)


def is_valid_signature(signature_def):
    return isinstance(signature_def, SignatureDef) and bool(signature_def.outputs)
