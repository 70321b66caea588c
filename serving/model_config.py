"""The models a server serves: from --model_name/--model_base_path, or from a
--model_config_file in tensorflow_model_server's text format:

    model_config_list {
      config {
        name: "ctr"
        base_path: "/models/ctr"
        model_version_policy { specific { versions: 3 versions: 4 } }
        version_labels { key: "stable" value: 3 }
        version_labels { key: "canary" value: 4 }
      }
    }
"""

import os

from google.protobuf import text_format

from psflow.errors import InvalidArgumentError
from psflow.proto.tfserving import model_server_config_pb2
from psflow.serving.version_policy import VersionPolicy


class ModelSettings:
    """One model: its name, base path, version policy and version labels."""

    def __init__(self, name, base_path, policy=None, labels=None):
        if not name:
            raise InvalidArgumentError("a model needs a name")
        if not base_path:
            raise InvalidArgumentError(f"model '{name}' needs a base_path")
        self.name = name
        self.base_path = os.path.abspath(base_path)
        self.policy = policy or VersionPolicy()
        self.labels = dict(labels or {})

    def __repr__(self):
        return f"ModelSettings({self.name!r}, {self.base_path!r}, {self.policy!r})"


def parse_model_config(text, where="the model config"):
    """[ModelSettings] of a ModelServerConfig in text format; InvalidArgumentError naming
    `where` for anything malformed."""
    message = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise InvalidArgumentError(f"{where}: {exc}") from None
    if not message.HasField("model_config_list"):
        raise InvalidArgumentError(f"{where} has no model_config_list")
    models = []
    for config in message.model_config_list.config:
        if config.model_platform not in ("", "tensorflow", "psflow"):
            raise InvalidArgumentError(f"{where}: model '{config.name}' has platform "
                                       f"'{config.model_platform}'; psflow-serve serves psflow "
                                       "exports")
        try:
            policy = VersionPolicy.from_proto(config.model_version_policy)
            models.append(ModelSettings(config.name, config.base_path, policy,
                                        dict(config.version_labels)))
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"{where}: {exc}") from None
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise InvalidArgumentError(f"{where} names a model twice: {names}")
    if not models:
        raise InvalidArgumentError(f"{where} names no model")
    return models


def read_model_config(path):
    try:
        with open(path, encoding="utf-8") as f:
            return parse_model_config(f.read(), path)
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read model config {path}: {exc}") from None
