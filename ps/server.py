"""A parameter-server shard as a running gRPC server, with its lifecycle: it stops by itself
when every worker has reported done, when told to, or when its parent process is gone."""

import logging
import os
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from psflow.proto import codec
from psflow.proto import psflow_pb2_grpc as pb_grpc

from .servicer import ParameterServerServicer
from .store import ShardStore

log = logging.getLogger(__name__)

SERVICE_NAME = "psflow.ParameterServer"


def _host_port(host, port):
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


class ParameterServer:
    """One shard: `start()`, then `wait()` until its lifecycle ends (or `stop()` it)."""

    def __init__(self, shard=0, num_workers=1, host="127.0.0.1", port=0, port_fallback=False,
                 parent_pid=None, threads=64, done_grace_s=0.5):
        self.store = ShardStore(shard=shard, num_workers=num_workers)
        self.host = host
        self.requested_port = port
        self.port_fallback = port_fallback
        self.parent_pid = parent_pid
        self.threads = threads
        self.done_grace_s = done_grace_s
        self.port = None
        self.stop_reason = None
        self._server = None
        self._health = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    @property
    def address(self):
        return _host_port(self.host, self.port)

    def start(self):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.threads,
                                                        thread_name_prefix="ps"),
                             options=codec.CHANNEL_OPTIONS)
        pb_grpc.add_ParameterServerServicer_to_server(ParameterServerServicer(self.store), server)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        self.port = self._bind(server)
        server.start()
        self._server = server
        for service in ("", SERVICE_NAME):
            self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        threading.Thread(target=self._watch, name="ps-lifecycle", daemon=True).start()
        log.info("serving shard %d on %s for %d workers", self.store.shard, self.address,
                 self.store.num_workers)
        return self

    def _bind(self, server):
        try:
            port = server.add_insecure_port(_host_port(self.host, self.requested_port))
        except RuntimeError:
            port = 0
        if port == 0 and self.requested_port != 0 and self.port_fallback:
            log.warning("port %d is taken; binding another free port", self.requested_port)
            try:
                port = server.add_insecure_port(_host_port(self.host, 0))
            except RuntimeError:
                port = 0
        if port == 0:
            raise OSError(f"cannot bind {_host_port(self.host, self.requested_port)}")
        return port

    def _watch(self):
        """Ends the server when all workers are done or the parent process is gone."""
        while not self._stopped.is_set():
            if self.store.all_done.wait(0.5):
                time.sleep(self.done_grace_s)  # let the last WorkerDone answer reach its caller
                self.stop("all workers are done")
                return
            if self.parent_pid is not None and not _alive(self.parent_pid):
                self.stop(f"parent process {self.parent_pid} is gone")
                return

    def stop(self, reason="stopped", grace=2.0):
        with self._stop_lock:
            if self._stopped.is_set() or self._server is None:
                self._stopped.set()
                return
            self.stop_reason = reason
            log.info("shard %d stopping: %s", self.store.shard, reason)
            self._health.enter_graceful_shutdown()
            self._server.stop(grace).wait()
            self._stopped.set()

    def wait(self, timeout=None):
        """Blocks until the server has stopped; returns True if it has."""
        return self._stopped.wait(timeout)


def _alive(pid):
    """True while process `pid` runs (an exited but unreaped process counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False
