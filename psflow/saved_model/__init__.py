"""Servables, with TF1's saved_model names: export a trained model's inference subgraph with
its values (`simple_save`, `builder.SavedModelBuilder`, `export_version` for numbered
versions BASE/N), read it back into a session (`loader.load`) or predict in process
(`load` / `Predictor`). The format is described in docs/serving.md."""

import types

from . import builder, loader, signature_constants, signature_def_utils, tag_constants
from .builder import SavedModelBuilder, export_version, simple_save
from .loader import MetaGraphDef, maybe_saved_model_directory
from .predictor import Predictor, load
from .signature_def_utils import SignatureDef, TensorInfo, build_tensor_info

Signature = SignatureDef
utils = types.SimpleNamespace(build_tensor_info=build_tensor_info)

__all__ = ["MetaGraphDef", "Predictor", "SavedModelBuilder", "Signature", "SignatureDef",
           "TensorInfo", "build_tensor_info", "builder", "export_version", "load", "loader",
           "maybe_saved_model_directory", "signature_constants", "signature_def_utils",
           "simple_save", "tag_constants", "utils"]
