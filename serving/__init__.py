"""psflow-serve: exported models served over TensorFlow Serving's gRPC and REST APIs.

TensorFlow Serving's core in small parts: a Source (`source.py`) finds the numbered versions
under a base path, a Loader (`version_loader.py`) loads and warms up one, a Manager
(`manager.py`) swaps versions in without a gap in availability and hands requests a
ServableHandle; the ServerCore (`server_core.py`) is the one prediction path the gRPC front
(`prediction_servicer.py`) and the REST front (`rest_api.py`) translate to. Around them: the
gray release's split (`traffic_split.py`), request metrics (`request_metrics.py`), dynamic
batching (`batching.py`), the model config file re-read while serving (`config_poller.py`)
and the Kubernetes manifests (`k8s_manifests.py`).
"""

from psflow.serving.manager import ModelManager, ServableHandle
from psflow.serving.model_config import ModelSettings, parse_model_config
from psflow.serving.model_server import ModelServer
from psflow.serving.server_core import ServerCore
from psflow.serving.source import VersionSource
from psflow.serving.version_loader import Loader
from psflow.serving.version_policy import VersionPolicy

__all__ = ["Loader", "ModelManager", "ModelServer", "ModelSettings", "ServableHandle",
           "ServerCore", "VersionPolicy", "VersionSource", "parse_model_config"]
