"""--model_config_file_poll_wait_seconds: the model config file re-read while serving, and the
models it names applied without a restart.

A model added gets its manager and source and is loaded in the background; a model removed
stops being served (its versions unload once their requests finish); a model whose policy or
labels changed takes them at once; a model whose base path changed is served from the new one
(as a removal and an addition). A file that cannot be read or parsed is logged and the models
stay as they are. The traffic split is checked again against the new labels (and kept, with an
error logged, when it names a label or a model no longer served).
"""

import logging
import threading

from grpc_health.v1 import health_pb2

from psflow.errors import InvalidArgumentError
from psflow.serving.manager import ModelManager
from psflow.serving.model_config import parse_model_config
from psflow.serving.source import VersionSource

log = logging.getLogger(__name__)


def _add(server, settings):
    manager = ModelManager(settings.name, server.loader, settings.labels,
                           server._availability)
    source = VersionSource(settings.base_path, settings.policy, manager.aspire,
                           server.poll_wait_seconds)
    server.set_health(settings.name, health_pb2.HealthCheckResponse.NOT_SERVING)
    server.core.add(settings.name, manager)
    server.sources[settings.name] = source
    server.settings[settings.name] = settings
    source.start()
    log.info("model %s added from %s (%r)", settings.name, settings.base_path,
             settings.policy)


def _remove(server, name):
    source = server.sources.pop(name)
    source.stop()
    manager = server.core.remove(name)
    del server.settings[name]
    manager.unload_all()
    server.set_health(name, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
    log.info("model %s removed", name)


def apply_models(server, models):
    """Makes `server` (a ModelServer) serve `models` ([ModelSettings]) from now on."""
    wanted = {m.name: m for m in models}
    for name in sorted(set(server.settings) - set(wanted)):
        _remove(server, name)
    for name, settings in sorted(wanted.items()):
        current = server.settings.get(name)
        if current is not None and current.base_path != settings.base_path:
            _remove(server, name)
            current = None
        if current is None:
            _add(server, settings)
            continue
        if current.labels != settings.labels:
            server.core.manager(name).set_labels(settings.labels)
            log.info("model %s labels: %s", name, settings.labels)
        if repr(current.policy) != repr(settings.policy):
            source = server.sources[name]
            source.policy = settings.policy
            log.info("model %s policy: %r", name, settings.policy)
            source.poll()
        server.settings[name] = settings
    server.refresh_health()
    if server.core.traffic_split is not None:
        server.core.traffic_split.reload(force=True)  # its labels are checked against these


class ModelConfigPoller:
    """Re-reads `path` every `poll_wait_seconds` and applies it to `server` when its text
    changed."""

    def __init__(self, path, server, poll_wait_seconds):
        self.path = path
        self.server = server
        self.poll_wait_seconds = poll_wait_seconds
        self._text = self._read_text()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    def _read_text(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                return f.read()
        except OSError:
            return None

    def poll(self):
        """One look at the file; True when it changed and was applied."""
        with self._lock:
            text = self._read_text()
            if text is None or text == self._text:
                return False
            try:
                models = parse_model_config(text, self.path)
            except InvalidArgumentError as exc:
                log.error("%s; keeping the models served as they are", exc)
                self._text = text
                return False
            self._text = text
            apply_models(self.server, models)
            return True

    def start(self):
        self._thread = threading.Thread(target=self._run, name="model-config", daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.poll_wait_seconds):
            try:
                self.poll()
            except Exception:  # the poller outlives any one failed reconfiguration
                log.exception("applying %s failed", self.path)

    def stop(self, timeout=None):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
