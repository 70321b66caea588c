"""A parameter-server shard as a running gRPC server, with its lifecycle: it stops by itself
when every worker has reported done, when told to, or when its parent process is gone."""

import ipaddress
import logging
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from psflow.parent import WATCH_INTERVAL_S, ParentWatch
from psflow.proto import codec
from psflow.transport import auth, lane, memory
from .lease import HEARTBEAT_S, LeaseKeeper
from .publisher import Publisher
from .servicer import ParameterServerServicer, add_to_server
from .shard_store import ShardStore

log = logging.getLogger(__name__)

SERVICE_NAME = "psflow.ParameterServer"
SERVER_OPTIONS = codec.CHANNEL_OPTIONS + [
    # gRPC sets SO_REUSEPORT by default, so a second server could bind a port in use and
    # silently share its traffic; a shard must own its port or fail to bind.
    ("grpc.so_reuseport", 0),
    # Beyond 1000 calls waiting for a thread, gRPC cancels new ones at random (3000: all).
    # A cancelled push is a lost gradient; a shard queues its workers' calls instead.
    ("grpc.server.max_pending_requests", 16384),
    ("grpc.server.max_pending_requests_hard_limit", 32768),
]


def host_port(host, port):
    """"host:port", with an IPv6 host in brackets."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


class ParameterServer:
    """One shard: `start()`, then `wait_for_termination()` until its lifecycle ends (every
    worker done, the parent process gone) or someone calls `stop()`.

    `threads` bounds the concurrent calls; it is large so that calls blocked in
    WaitInitialized never starve pulls and pushes. After the last WorkerDone the server waits
    `done_grace_s` so that the answer reaches its caller, then stops.
    """

    def __init__(self, shard=0, num_workers=1, host="127.0.0.1", port=0, port_fallback=False,
                 parent_pid=None, threads=64, done_grace_s=0.5, stop_grace_s=2.0,
                 token=None, credentials=None, checkpoint_root=None, allow_nonfinite=False,
                 insecure=False, publish_period=0.2, dense_period=5.0,
                 follower_buffer_bytes=256 << 20, online=False, chain_master=None,
                 heartbeat_s=HEARTBEAT_S, advertise=None):
        """`token`: refuse calls without it (default: PSFLOW_AUTH_TOKEN, if set).
        `credentials`: gRPC server credentials to serve TLS (default: from PSFLOW_TLS_CERT
        and PSFLOW_TLS_KEY, if set). `checkpoint_root`: the folder SaveShard may write in
        (none: no SaveShard). `allow_nonfinite`: apply NaN/Inf gradients instead of refusing
        them. Without a token the server binds only a loopback address, unless `insecure`
        (ValueError otherwise). `publish_period`, `dense_period`, `follower_buffer_bytes`:
        how often the shard publishes its tables' changes and its dense values to the serving
        processes that follow it, and how many bytes it keeps for each (see publisher).
        `online`: the job trains on an unbounded stream, so the server keeps serving when
        every worker is done (it stops when told to, or when its parent process is gone).
        `chain_master`: the address of the chain master this replica heartbeats to every
        `heartbeat_s` (ps/lease.py); it then refuses writes whenever its lease has run out.
        `advertise`: the address the chain master and the other replicas know this server by
        (default: host:port)."""
        self.token = auth.token_from_env() if token is None else token
        if not self.token and not insecure and not _is_loopback(host):
            raise ValueError(f"refusing to serve on {host} without a job token: anyone who "
                             "reaches it could read, change or stop the job's variables; set "
                             "PSFLOW_AUTH_TOKEN, or pass --insecure to serve anyway")
        self.store = ShardStore(shard=shard, num_workers=num_workers,
                                allow_nonfinite=allow_nonfinite, checkpoint_root=checkpoint_root)
        self.publisher = Publisher(self.store, publish_period, dense_period,
                                   follower_buffer_bytes)
        self.credentials = auth.server_credentials() if credentials is None else credentials
        self.host = host
        self.requested_port = port
        self.port_fallback = port_fallback
        self.parent_pid = parent_pid
        self.online = online
        self.chain_master, self.heartbeat_s = chain_master, heartbeat_s
        self.advertise = advertise
        self._lease_keeper = None
        self.threads = threads
        self.done_grace_s = done_grace_s
        self.stop_grace_s = stop_grace_s
        self.port = None
        self.stop_reason = None
        self._server = None
        self.servicer = None
        self._executor = None
        self._health = None
        self._lane = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._parent = ParentWatch(parent_pid) if parent_pid is not None else None

    @property
    def shard(self):
        return self.store.shard

    @property
    def address(self):
        return host_port(self.host, self.port)

    @property
    def chain_address(self):
        """The address the chain master and the other replicas know this server by."""
        return self.advertise or self.address

    def start(self):
        """Binds, starts serving and starts the lifecycle thread; OSError if the port cannot
        be bound. Returns self."""
        memory.one_heap()
        self._executor = futures.ThreadPoolExecutor(max_workers=self.threads,
                                                    thread_name_prefix=f"ps{self.shard}")
        interceptors = [auth.TokenInterceptor(self.token)] if self.token else []
        server = grpc.server(self._executor, options=SERVER_OPTIONS, interceptors=interceptors)
        servicer = ParameterServerServicer(self.store, self.publisher, self.token)
        self.servicer = servicer
        add_to_server(servicer, server)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        try:
            self.port = self._bind(server)
        except OSError:
            self._executor.shutdown(wait=False)
            raise
        server.start()
        self._server = server
        self.publisher.start()
        if lane.enabled():
            try:
                self._lane = lane.LaneServer(servicer, self.token,
                                             name_prefix=f"psflow-ps{self.shard}").start()
                servicer.lane = self._lane.name
            except OSError as exc:
                log.warning("shard %d offers no same-host lane: %s", self.shard, exc)
        if self.chain_master:
            self.heartbeat_to(self.chain_master)
        for service in ("", SERVICE_NAME):
            self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        threading.Thread(target=self._watch, name=f"ps{self.shard}-lifecycle",
                         daemon=True).start()
        if not self.token:
            log.warning("shard %d serves without a job token (PSFLOW_AUTH_TOKEN): anyone who "
                        "reaches %s may call it", self.shard, self.address)
        log.info("serving shard %d on %s for %d workers", self.shard, self.address,
                 self.store.num_workers)
        return self

    def heartbeat_to(self, chain_master):
        """Starts heartbeating to the chain master at `chain_master` (ps/lease.py): from now on
        the server refuses writes whenever its lease has run out."""
        if self._lease_keeper is None:
            self.chain_master = chain_master
            self._lease_keeper = LeaseKeeper(chain_master, self.shard, self.chain_address,
                                             self.servicer.replication, self.token,
                                             self.heartbeat_s).start()
        return self

    def _add_port(self, server, address):
        if self.credentials is not None:
            return server.add_secure_port(address, self.credentials)
        return server.add_insecure_port(address)

    def _bind(self, server):
        try:
            port = self._add_port(server, host_port(self.host, self.requested_port))
        except RuntimeError:
            port = 0
        if port == 0 and self.requested_port != 0 and self.port_fallback:
            log.warning("port %d is taken; binding another free port", self.requested_port)
            try:
                port = self._add_port(server, host_port(self.host, 0))
            except RuntimeError:
                port = 0
        if port == 0:
            raise OSError(f"cannot bind {host_port(self.host, self.requested_port)}")
        return port

    def _watch(self):
        """Ends the server when all workers are done (unless online) or the parent process
        is gone; gives memory that calls freed back to the system."""
        moved = 0
        while not self._stopped.is_set():
            traffic = self.store.counters.traffic
            if traffic - moved >= RELEASE_AFTER_BYTES:
                moved = traffic
                memory.release_free_memory()
            if self.online:
                self._stopped.wait(WATCH_INTERVAL_S)
            elif self.store.all_done.wait(WATCH_INTERVAL_S):
                time.sleep(self.done_grace_s)  # let the last WorkerDone answer reach its caller
                if self.store.all_done.is_set():  # unless a restarted worker came back
                    self.stop(reason="all workers are done")
                    return
            if self._parent is not None and not self._parent.alive():
                self.stop(reason=f"parent process {self.parent_pid} is gone")
                return

    def stop(self, grace=None, reason="stop requested"):
        """Stops serving: health turns NOT_SERVING, waits in WaitInitialized end, calls in
        flight get `grace` seconds to finish. Idempotent; returns once stopped."""
        grace = self.stop_grace_s if grace is None else grace
        with self._stop_lock:
            if self._stopped.is_set():
                return
            if self._server is None:  # never started
                self._stopped.set()
                return
            self.stop_reason = reason
            if self.store.holds_global_step:  # the job's last word on how far it got
                log.info("shard %d stopping at global step %d: %s", self.shard,
                         self.store.global_step, reason)
            else:
                log.info("shard %d stopping: %s", self.shard, reason)
            self._health.enter_graceful_shutdown()
            self.store.close()
            self.publisher.stop()
            if self._lease_keeper is not None:
                self._lease_keeper.stop()
            if self.servicer is not None:
                self.servicer.replication.close()
            if self._lane is not None:
                self._lane.stop()
            self._server.stop(grace).wait()
            self._executor.shutdown(wait=False)
            self._stopped.set()

    def wait_for_termination(self, timeout=None):
        """Blocks until the server has stopped (or `timeout` seconds); True if it has."""
        return self._stopped.wait(timeout)

    wait = wait_for_termination

    @property
    def stopped(self):
        return self._stopped.is_set()

    def __enter__(self):
        return self if self._server is not None else self.start()

    def __exit__(self, *exc):
        self.stop(grace=0)


# The C library keeps the memory that a call's buffers had (each a variable's size) in its
# heaps for reuse; once this many bytes went through since the last time, the lifecycle
# thread hands what is free back to the system, so a shard's resident memory stays near its
# variables rather than growing by a few buffers per thread that ever served a call.
RELEASE_AFTER_BYTES = 32 * 1024 * 1024


def _is_loopback(host):
    if host.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
