"""The worker's client of one parameter-server shard, and the mapping of gRPC failures to
psflow's exceptions (each naming the shard and carrying the server's message)."""

import logging
import threading
import time
from concurrent import futures

import grpc

from psflow.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    PsflowError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from psflow.proto import codec, wire
from psflow.proto import psflow_pb2 as pb
from psflow.proto import psflow_pb2_grpc as pb_grpc
from psflow.transport import auth, lane
from .failover import SAME_HEAD_AGAIN_S, ChainLookup, chain_changed

_ERRORS = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
}

log = logging.getLogger(__name__)

# Bound on any single call, so that nothing waits forever on a server that is gone.
CALL_TIMEOUT_S = 120.0
# The metadata key that names the epoch of the shard's chain a call is meant for (the key
# psflow.ps.chain reads).
EPOCH_METADATA = "psflow-epoch"


class ShardClient:
    """gRPC stub of one parameter server, with psflow errors in place of grpc.RpcError. Its
    calls carry the job's token (`token`, default PSFLOW_AUTH_TOKEN) and use TLS when
    PSFLOW_TLS_CA is set."""

    def __init__(self, index, address, timeout=CALL_TIMEOUT_S, token=None, chain_master=None):
        """`chain_master`: the address of the chain master of a replicated shard. The client
        then calls the head of the shard's chain at its epoch, and a call that fails because
        the chain changed (its head died, its epoch moved on) is sent again, the same request
        (a push keeps its id, so it is applied once), to the head of the new chain."""
        self.index = index
        self.address = address
        self.timeout = timeout
        self.token = auth.token_from_env() if token is None else token
        self.metadata = auth.call_metadata(self.token)
        self.epoch = None
        self.lane = None  # the shard's same-host lane, once RegisterWorker offered one
        # Bytes of the Pull, PullRows and Push messages sent and received (the step's traffic).
        self.sent = self.received = 0
        self._old_channels = []
        self._switch = threading.Lock()
        self._connect(address)
        self.chains = None if not chain_master else ChainLookup(chain_master, index,
                                                                self.token)
        if self.chains is not None:
            found = self.chains.newer(0, time.monotonic() + timeout)
            if found is None:
                raise UnavailableError(f"parameter server {index}: the chain master at "
                                       f"{chain_master} did not answer within {timeout:g} s")
            self._follow(*found)

    def _connect(self, address):
        self.address = address
        self.channel = auth.open_channel(address, codec.CHANNEL_OPTIONS + [
            # A restarted server is found again within a second or two.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ])
        self.stub = pb_grpc.ParameterServerStub(self.channel)
        self._raw_calls = {}
        # Replies with values are read without copying the values (see proto.wire).
        self._pull = self.channel.unary_unary(
            "/psflow.ParameterServer/Pull", request_serializer=self._counted_request,
            response_deserializer=self._counted(wire.pull_reply))
        self._pull_rows = self.channel.unary_unary(
            "/psflow.ParameterServer/PullRows", request_serializer=self._counted_request,
            response_deserializer=self._counted(wire.pull_reply))

    def _follow(self, epoch, head):
        """Calls the head `head` of the chain at `epoch` from now on (calls in flight on the
        old channel finish there; it is closed with the client)."""
        with self._switch:
            if self.epoch is not None and epoch <= self.epoch:
                return
            if head != self.address:
                log.warning("parameter server %d: its chain is at epoch %d; calling its head "
                            "%s (was %s)", self.index, epoch, head, self.address)
                self._old_channels.append(self.channel)
                self._connect(head)
            self.set_epoch(epoch)

    def set_epoch(self, epoch):
        """Sends `epoch`, the epoch of the shard's chain of replicas this client calls the
        head of, with every call from now on, so that a replica at another epoch refuses it
        (None: no epoch, as to a lone server). Calls with an epoch do not use the lane,
        which carries no metadata."""
        self.epoch = None if epoch is None else int(epoch)
        self.metadata = auth.call_metadata(self.token) + (
            () if epoch is None else ((EPOCH_METADATA, str(self.epoch)),))

    def _counted_request(self, request):
        data = request.SerializeToString()
        self.sent += len(data)
        return data

    def _counted(self, read):
        def counted(data):
            self.received += len(data)
            return read(data)
        return counted

    def call(self, method, request, timeout=None, wait_for_ready=True):
        """The call's answer. By default a call waits (within its timeout) for a server that
        is not reachable yet, e.g. one that is restarting, rather than failing at once.
        Pull, PullRows and Push go through the shard's same-host lane when there is one.
        With a chain master, a call the chain's change failed goes to the new head (within
        the call's timeout), the same request again."""
        if self.chains is None:
            return self._call(method, request, timeout, wait_for_ready)
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            epoch = self.epoch
            try:
                return self._call(method, request, timeout, wait_for_ready=False)
            except PsflowError as exc:
                if not chain_changed(exc) or time.monotonic() > deadline:
                    raise
                log.info("parameter server %d: %s failed (%s); asking the chain master",
                         self.index, method, exc)
                found = self.chains.newer(
                    epoch or 0, min(deadline, time.monotonic() + SAME_HEAD_AGAIN_S))
                if found is not None:
                    self._follow(*found)

    def _call(self, method, request, timeout, wait_for_ready):
        same_host = self.lane if self.epoch is None else None
        if same_host is not None and method in lane.METHODS:
            reply = self._lane_call(same_host, method, request, timeout or self.timeout)
            if reply is not None:
                return reply
        if isinstance(request, wire.PushBuilder):
            stub_method, request = self._raw(method), request.to_bytes()
            self.sent += len(request)
        elif method == "Pull":
            stub_method = self._pull
        elif method == "PullRows":
            stub_method = self._pull_rows
        else:
            stub_method = getattr(self.stub, method)
        try:
            reply = stub_method(request, timeout=timeout or self.timeout,
                                wait_for_ready=wait_for_ready, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise self.error(method, exc) from None
        if method == "RegisterWorker":
            self._open_lane(reply.lane)
        return reply

    def _open_lane(self, name):
        """Connects to the lane `name` the shard offers, unless connected to it already; a
        shard on another host (or in another network namespace) cannot be reached by it, and
        its calls stay on gRPC."""
        if not name or not lane.enabled() or \
                (self.lane is not None and self.lane.name == name and not self.lane.broken):
            return
        if self.lane is not None:
            self.lane.close()
            self.lane = None
        try:
            self.lane = lane.LaneClient(name, self.token)
            log.debug("parameter server %d: using its same-host lane", self.index)
        except (OSError, lane.LaneError) as exc:
            log.debug("parameter server %d: no lane (%s); calls go through gRPC", self.index,
                      exc)

    def _lane_call(self, same_host, method, request, timeout):
        """The call's answer through the lane; None when the lane is busy or was lost (the
        call then goes through gRPC, which also finds a restarted server)."""
        pieces = request.to_pieces() if isinstance(request, wire.PushBuilder) \
            else [request.SerializeToString()]
        try:
            data = same_host.call(method, pieces, timeout)
        except lane.LaneError as exc:
            raise self.status_error(method, exc.code, exc.details) from None
        except TimeoutError:
            raise self.status_error(method, grpc.StatusCode.DEADLINE_EXCEEDED,
                                    f"no answer within {timeout:.0f} s") from None
        except (OSError, ConnectionError) as exc:
            log.debug("parameter server %d: the lane failed (%s); using gRPC", self.index, exc)
            self.lane = None
            return None
        if data is None:
            return None
        self.sent += sum(len(p) for p in pieces)
        self.received += len(data)
        return wire.push_reply(data) if method == "Push" else wire.pull_reply(data)

    def _raw(self, method):
        """`method` taking a request already serialized (bytes)."""
        call = self._raw_calls.get(method)
        if call is None:
            reply = self._counted(wire.push_reply) if method == "Push" else getattr(
                pb, pb.DESCRIPTOR.services_by_name["ParameterServer"]
                .methods_by_name[method].output_type.name).FromString
            call = self._raw_calls[method] = self.channel.unary_unary(
                f"/psflow.ParameterServer/{method}", request_serializer=None,
                response_deserializer=reply)
        return call

    def error(self, method, exc):
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        return self.status_error(method, code, details)

    def status_error(self, method, code, details):
        """The psflow exception for a call that ended with grpc.StatusCode `code`."""
        kind = _ERRORS.get(code, PsflowError)
        name = code.name if code is not None else "error"
        return kind(f"parameter server {self.index} ({self.address}) {method}: {name}: {details}")

    def close(self):
        if self.lane is not None:
            self.lane.close()
        if self.chains is not None:
            self.chains.close()
        for channel in self._old_channels + [self.channel]:
            channel.close()


class Fanout:
    """Runs one blocking call per shard at once: all but the last on a small, persistent
    thread pool, the last on the calling thread. (gRPC's own `future()` starts a thread per
    call, which costs more than a small call itself.)"""

    def __init__(self, threads):
        self._pool = futures.ThreadPoolExecutor(max_workers=max(threads, 1),
                                                thread_name_prefix="psflow-fanout")

    def call(self, calls):
        """`calls` is a list of (client, method, request); returns the answers in order."""
        if not calls:
            return []
        if len(calls) == 1:
            client, method, request = calls[0]
            return [client.call(method, request)]
        pending = [self._pool.submit(client.call, method, request)
                   for client, method, request in calls[:-1]]
        client, method, request = calls[-1]
        last = client.call(method, request)
        return [p.result() for p in pending] + [last]

    def close(self):
        self._pool.shutdown(wait=False)


def worker_request(task_index):
    return pb.WorkerRequest(task_index=task_index)


def shard_clients(addresses, timeout=CALL_TIMEOUT_S, token=None, chain_master=None):
    """A ShardClient for each of the parameter servers at `addresses`, shard 0 first (with
    `chain_master`, the heads of the shards' chains at the start)."""
    return [ShardClient(shard, address, timeout, token, chain_master)
            for shard, address in enumerate(addresses)]
