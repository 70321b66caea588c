"""The psflow-serve process's parts put together: per model a Source and a Manager, the
ServerCore, the gRPC server (TF Serving's services and grpc.health.v1) and the REST front,
both on one event loop (front_loop.py); started and stopped as one."""

import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from psflow.serving.batching import BatchScheduler, batching_load_fn
from psflow.serving.config_poller import ModelConfigPoller
from psflow.serving.front_loop import FrontLoop
from psflow.serving.manager import ModelManager
from psflow.serving.prediction_servicer import generic_handlers
from psflow.serving.rest_api import RestServer
from psflow.serving.server_core import ServerCore
from psflow.serving.source import VersionSource
from psflow.serving.traffic_split import TrafficSplit
from psflow.serving.version_loader import Loader, load_predictor

log = logging.getLogger(__name__)

HEALTH_SERVICES = ("", "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")
_MESSAGE_BYTES = 1 << 30


class ModelServer:
    """Serves `models` ([ModelSettings]) on `port` (gRPC) and `rest_port` (None: no REST);
    ports of 0 take any free port (`grpc_port`, `rest_api_port` tell which). With `batching`
    (BatchingOptions) every loaded predictor batches concurrent requests."""

    def __init__(self, models, port, rest_port=None, poll_wait_seconds=1.0, load_fn=None,
                 host="0.0.0.0", threads=16, traffic_split_file=None, model_config_file=None,
                 config_poll_wait_seconds=0.0, batching=None):
        self.front = FrontLoop(threads, batching=batching is not None)
        self.batch_scheduler = BatchScheduler(batching) if batching is not None else None
        if self.batch_scheduler is not None:
            load_fn = batching_load_fn(load_fn or load_predictor, self.batch_scheduler)
        self.loader = Loader(load_fn)
        self.poll_wait_seconds = poll_wait_seconds
        self.settings = {m.name: m for m in models}
        self.health = health.aio.HealthServicer()
        managers = {m.name: ModelManager(m.name, self.loader, m.labels, self._availability)
                    for m in models}
        self.core = ServerCore(managers)
        if traffic_split_file:
            self.core.traffic_split = TrafficSplit(traffic_split_file, self.core.labels_of,
                                                   poll_wait_seconds)
        self.sources = {m.name: VersionSource(m.base_path, m.policy, managers[m.name].aspire,
                                              poll_wait_seconds) for m in models}
        self.config_poller = (ModelConfigPoller(model_config_file, self, config_poll_wait_seconds)
                              if model_config_file and config_poll_wait_seconds > 0 else None)
        for service in HEALTH_SERVICES + tuple(managers):
            self.set_health(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.grpc_server, self.grpc_port = self.front.call(self._grpc_server(host, port))
        self.rest = (RestServer(self.core, self.front, rest_port, host)
                     if rest_port is not None else None)
        self.rest_api_port = self.rest.port if self.rest else None

    async def _grpc_server(self, host, port):
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", _MESSAGE_BYTES),
                                          ("grpc.max_send_message_length", _MESSAGE_BYTES),
                                          ("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers(generic_handlers(self.core, self.front))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        return server, server.add_insecure_port(f"{host}:{port}")

    def set_health(self, service, status):
        """Sets a service's grpc.health.v1 status (from any thread)."""
        if self.front.loop.is_closed():
            return
        if self.front.in_loop():
            self.front.soon(self.health.set(service, status))
        else:
            self.front.call(self.health.set(service, status))

    def _availability(self, name, available):
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        self.set_health(name, serving if available else not_serving)
        self.refresh_health()

    def refresh_health(self):
        """The server-wide services' health: SERVING once every model has a version."""
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        everything = serving if self.core.available else not_serving
        for service in HEALTH_SERVICES:
            self.set_health(service, everything)

    def start(self):
        self.front.call(self.grpc_server.start())
        if self.rest:
            self.rest.start()
        for source in self.sources.values():
            source.start()
        if self.config_poller is not None:
            self.config_poller.start()
        if self.core.traffic_split is not None:
            self.core.traffic_split.start()
        log.info("serving %s: gRPC on port %s, REST on port %s", sorted(self.core.managers),
                 self.grpc_port, self.rest_api_port)

    def stop(self, grace=10.0):
        """Refuses new requests, lets those in flight finish (up to `grace` s), then stops."""
        self.front.call(self.health.enter_graceful_shutdown())
        drained = self.core.close(grace)
        if not drained:
            log.warning("requests still in flight after %.1f s; stopping anyway", grace)
        if self.config_poller is not None:
            self.config_poller.stop(timeout=grace)
        for source in self.sources.values():
            source.stop(timeout=grace)
        if self.core.traffic_split is not None:
            self.core.traffic_split.stop(timeout=grace)
        self.front.call(self.grpc_server.stop(grace=1.0))
        if self.batch_scheduler is not None:
            self.batch_scheduler.stop()
        if self.rest:
            self.rest.stop()
        for manager in self.core.managers.values():
            manager.unload_all()
        self.front.close()
        return drained
