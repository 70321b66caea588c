"""The gRPC servicer: each handler decodes its request, makes one call on the shard store and
encodes the answer (the wire format is psflow.proto's business, the rules the store's).
Errors become status codes; the server keeps serving whatever a request holds."""

import functools
import logging

import grpc
from google.protobuf.message import DecodeError

from psflow.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnavailableError,
)
from psflow.proto import codec, wire
from psflow.proto import psflow_pb2 as pb
from psflow.proto import psflow_pb2_grpc as pb_grpc
from psflow.train.consistency import Consistency
from . import faults, shard_copy
from .replication import Replication
from .sync_chain import SYNC_DECISION, ChainSteps

log = logging.getLogger(__name__)

_STATUS = [
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (codec.CodecError, grpc.StatusCode.INVALID_ARGUMENT),
    (DecodeError, grpc.StatusCode.INVALID_ARGUMENT),  # the small fields of a push
    (FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
]


def _status_of(exc):
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            return code
    return None


_REQUEST_TYPES = {m.name: getattr(pb, m.input_type.name)
                  for m in pb.DESCRIPTOR.services_by_name["ParameterServer"].methods}


def _handler(method):
    """Parses the request (it arrives as bytes: a malformed one is INVALID_ARGUMENT, not
    gRPC's INTERNAL "Exception deserializing request!") and turns exceptions from the store
    into gRPC status codes with their messages; anything unexpected becomes INTERNAL (logged
    with its traceback) and the server carries on. Push parses its own bytes (proto.wire).
    A worker's call goes through the shard's chain (see replication): its epoch is checked
    and a write is applied in the chain's order and passed down it."""
    name = method.__name__
    request_type = None if name == "Push" else _REQUEST_TYPES[name]

    @functools.wraps(method)
    def handle(self, request, context):
        try:
            raw = request
            if request_type is not None and isinstance(request, bytes):
                try:
                    request = request_type.FromString(request)
                except DecodeError as exc:
                    raise codec.CodecError(f"{name}: the request is not a "
                                           f"{request_type.__name__}: {exc}") from None
            if name in _CHAIN_METHODS:
                return method(self, request, context)
            return self.replication.handle(name, raw, request, context,
                                           lambda: method(self, request, context))
        except Exception as exc:  # noqa: BLE001 -- every failure must become a status
            code = _status_of(exc)
            if code is None:
                log.exception("%s failed", method.__name__)
                code = grpc.StatusCode.INTERNAL
                message = f"{method.__name__}: {type(exc).__name__}: {exc}"
            else:
                log.debug("%s refused: %s", method.__name__, exc)
                message = str(exc)
        context.abort(code, message)
    return handle


# The rpcs that configure and feed the chain itself: they carry their own epoch.
_CHAIN_METHODS = ("InstallChain", "Forward")

_MODES = {}  # (mode, replicas, staleness) of a message -> Consistency, made once


def _consistency(request):
    """The psflow.train.consistency.Consistency a PushRequest asks for (async when unset), as
    it runs (ssp with staleness 0 is sync)."""
    c = request.consistency
    key = (c.mode, c.replicas_to_aggregate, c.staleness) if request.HasField("consistency") \
        else None
    consistency = _MODES.get(key)
    if consistency is None:
        consistency = _parse_consistency(request) if key else Consistency()
        if len(_MODES) < 64:  # a job uses one or two; a stream of odd ones is not kept
            _MODES[key] = consistency
    return consistency


def _parse_consistency(request):
    c = request.consistency
    if c.mode not in pb.Consistency.Mode.values():
        raise InvalidArgumentError(f"unknown consistency mode {c.mode}")
    mode = pb.Consistency.Mode.Name(c.mode).lower()
    try:
        # Each mode ignores the other's parameter.
        return Consistency(mode, c.replicas_to_aggregate if mode == "sync" else 0,
                           c.staleness if mode == "ssp" else 0).effective()
    except ValueError as exc:
        raise InvalidArgumentError(str(exc)) from None


def _positions(messages):
    """[(dataset, shard, num_shards, file, lines)] of InputPosition messages."""
    return [(p.dataset, p.shard, p.num_shards, p.file, p.lines) for p in messages]


def _add_positions(field, positions):
    for dataset, shard, num_shards, file, lines in positions:
        field.add(dataset=dataset, shard=shard, num_shards=num_shards, file=file, lines=lines)


def _serialize(reply):
    """A reply message's bytes; replies built as bytes already pass as they are."""
    if isinstance(reply, bytes):
        return reply
    if isinstance(reply, wire.Pieces):
        return reply.to_bytes()
    return reply.SerializeToString()


def add_to_server(servicer, server):
    """Registers `servicer` like the generated add_ParameterServerServicer_to_server, with
    replies that may be ready-made bytes."""
    service = pb.DESCRIPTOR.services_by_name["ParameterServer"]
    handlers = {
        method.name: (grpc.unary_stream_rpc_method_handler if method.server_streaming
                      else grpc.unary_unary_rpc_method_handler)(
            getattr(servicer, method.name),
            # Each handler parses its own request (see _handler).
            request_deserializer=None,
            response_serializer=_serialize)
        for method in service.methods}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


class ParameterServerServicer(pb_grpc.ParameterServerServicer):
    """The ParameterServer service over a ShardStore (see psflow.proto's psflow.proto)."""

    def __init__(self, store, publisher=None, token=None):
        """`token`: the job's, sent on the writes this replica forwards down its chain."""
        self.store = store
        self.publisher = publisher  # a psflow.ps.publisher.Publisher, for Follow
        self.lane = ""  # the name of the same-host lane offered to workers (transport.lane)
        self.replication = Replication(store.shard, self.apply_write, token)
        self.chain_steps = ChainSteps(store, self.replication)

    def apply_write(self, method, data):
        """Applies a write forwarded down the chain (or a piece of a shard's copy, its bytes or
        the message parsed) as the handler `method` applies a worker's (its answer is the
        caller's business)."""
        if method == SYNC_DECISION:
            self.chain_steps.apply(data)
            return
        request = data if method == "Push" or not isinstance(data, bytes) \
            else _REQUEST_TYPES[method].FromString(data)
        # Called without a context, a handler applies the write and builds no answer.
        getattr(type(self), method).__wrapped__(self, request, None)

    @_handler
    def InstallChain(self, request, context):
        config, applied = self.replication.install(request.epoch, list(request.replicas),
                                                   request.index)
        return pb.ChainConfigResponse(epoch=config.epoch, applied_seq=applied,
                                      incarnation=self.store.tables.incarnation)

    @_handler
    def Forward(self, request, context):
        return pb.ForwardResponse(applied_seq=self.replication.forwarded(request))

    @_handler
    def DeclareVariables(self, request, context):
        for v in request.variables:
            if v.dtype not in codec.DTYPES:
                raise InvalidArgumentError(f"variable {v.name!r}: dtype {v.dtype!r} is not one "
                                           f"of {', '.join(codec.DTYPES)}")
        initialized = self.store.declare(
            [(v.name, v.dtype, tuple(v.shape)) for v in request.variables])
        if request.tables:
            self.store.declare_tables([{
                "name": t.name, "dim": t.dim, "dtype": t.dtype,
                "initializer": {"kind": t.initializer, **dict(t.initializer_params)},
                "filter_freq": t.filter_freq, "steps_to_live": t.steps_to_live,
                "max_rows": t.max_rows}
                for t in request.tables])
        return pb.DeclareVariablesResponse(initialized=initialized)

    @_handler
    def InitializeVariables(self, request, context):
        values = {}
        for item in request.values:
            values[item.name] = codec.decode(item.tensor, f"initial value of {item.name!r}")
        slots = {}
        for item in request.slots:
            slots[(item.variable, item.rule, item.slot)] = codec.decode(
                item.tensor, f"slot {item.rule}/{item.slot} of {item.variable!r}")
        if slots or request.set_global_step:
            self.store.restore_slots(slots, request.global_step if request.set_global_step
                                     else None)
        if request.set_global_step and self.store.holds_global_step:
            self.store.input_positions.replace(_positions(request.input_positions))
        for rows in request.table_rows:
            self.store.load_table(rows.name, {
                f.name: codec.decode(f.tensor, f"{f.name} of table {rows.name!r}")
                for f in rows.fields})
        assigned = self.store.initialize(values, overwrite=request.overwrite)
        return pb.InitializeVariablesResponse(assigned=assigned)

    @_handler
    def WaitInitialized(self, request, context):
        timeout = max(request.timeout_ms, 0) / 1000.0
        remaining = context.time_remaining()
        if remaining is not None:
            # Answer before the caller's deadline, so it learns what is still missing.
            timeout = min(timeout, max(remaining - 0.5, 0.0))
        # A caller that goes away wakes the wait, so it does not hold a server thread.
        context.add_callback(self.store.wake_waiters)
        missing = self.store.wait_initialized(list(request.names), timeout,
                                              is_active=context.is_active)
        return pb.WaitInitializedResponse(ready=not missing, missing=missing)

    @_handler
    def Pull(self, request, context):
        header = self._pull_header("Pull", request)
        if context is None:  # a step's commit forwarded down the chain
            return None
        return self.store.with_values(request.names,
                                      lambda values: wire.pull_response(header, values))

    @_handler
    def PullRows(self, request, context):
        header = self._pull_header("PullRows", request)
        selections = [(s.name, codec.decode(s.rows, f"rows of {s.name!r}"))
                      for s in request.selections]
        keyed = []
        if request.keys:
            keyed = self.store.lookup_keys(
                [(k.name, codec.decode(k.keys, f"keys of table {k.name!r}"),
                  codec.decode(k.counts, f"counts of table {k.name!r}")
                  if k.HasField("counts") else None, k.train) for k in request.keys],
                request.global_step)
        if context is None:  # a write forwarded down the chain: its answer is the head's
            return None
        if not selections:
            return wire.pull_response(header, keyed)
        return self.store.with_rows(
            selections, lambda values: wire.pull_response(header, list(values) + keyed))

    def _pull_header(self, method, request):
        """A PullResponse without values, after applying the request's sync commit."""
        self.chain_steps.settle_read(method, request)
        commit = (request.commit.step, list(request.commit.workers)) \
            if request.HasField("commit") else None
        global_step, decision = self.store.pull_header(commit)
        header = pb.PullResponse(global_step=global_step)
        if decision is not None:
            header.decision.step, header.decision.workers[:] = decision[0], decision[1]
        return header

    @_handler
    def Push(self, request, context):
        # The request arrives as bytes; the gradients are read in place (see proto.wire).
        request = wire.Push(request)
        consistency = _consistency(request.header)
        in_chain = self.chain_steps.in_chain(consistency)
        result = self.store.push_step(
            [(g.name, g.values, g.indices, g.version, g.keyed) for g in request.gradients],
            self.store.rule(request.rule.name, dict(request.rule.hyper)),
            consistency, worker=request.worker,
            global_step=request.global_step,
            increment_global_step=request.increment_global_step,
            push_id=wire.push_id_of(request.header), returns=request.pull,
            input_positions=_positions(request.header.input_positions), wait=not in_chain)
        if in_chain:  # recorded under the chain's order lock: shard 0's head waits after it
            return self.chain_steps.later(request.worker, request.global_step, consistency,
                                          result, lambda r: self._push_reply(request,
                                                                             consistency, r))
        if context is None:  # forwarded down the chain: the values it returns are the head's
            return None
        return self._push_reply(request, consistency, result)

    def _push_reply(self, request, consistency, result):
        header = pb.PushResponse(staleness=result.staleness, global_step=result.global_step,
                                 dropped=result.dropped)
        if result.decision is not None:
            header.decision.step, header.decision.workers[:] = result.decision
        if not request.pull:
            return header
        if consistency.synchronous:
            # Every worker of the step reads the values the step made: built once.
            values = self.store.with_values(request.pull, wire.pushed_values, share=True)
            return wire.Pieces([values, header.SerializeToString()])
        return self.store.with_values(request.pull,
                                      lambda values: wire.push_response(header, values))

    @_handler
    def SaveShard(self, request, context):
        faults.hit("mid-checkpoint", self.store.shard, self.replication.config.index)
        digest, step, size, names, positions, (delta, seq, incarnation) = \
            self.store.save_incremental(request.path, request.since_seq,
                                        request.since_incarnation,
                                        # a replica of a chain changes only by its log's writes
                                        evict=self.replication.config.epoch == 0)
        reply = pb.SaveShardResponse(sha256=digest, global_step=-1 if step is None else step,
                                     bytes=size, variables=names, delta=delta, table_seq=seq,
                                     incarnation=incarnation)
        _add_positions(reply.input_positions, positions)
        return reply

    @_handler
    def GetInputPositions(self, request, context):
        reply = pb.InputPositionsResponse()
        _add_positions(reply.positions, self.store.input_positions.all())
        return reply

    @_handler
    def RegisterWorker(self, request, context):
        return self._membership(self.store.register(request.task_index))

    @_handler
    def Heartbeat(self, request, context):
        return self._membership(self.store.heartbeat(request.task_index, request.local_step,
                                                     request.loss, request.activity,
                                                     request.examples))

    @_handler
    def WorkerDone(self, request, context):
        return self._membership(self.store.done(request.task_index))

    @_handler
    def GetStats(self, request, context):
        stats = self.store.stats()
        reply = pb.StatsResponse(
            shard=stats["shard"], global_step=stats["global_step"], pushes=stats["pushes"],
            bytes_received=stats["bytes_received"], bytes_sent=stats["bytes_sent"],
            staleness_histogram=stats["staleness_histogram"], variables=stats["variables"],
            uptime_s=stats["uptime_s"], dropped=stats["dropped"], nonfinite=stats["nonfinite"],
            variable_bytes=stats["variable_bytes"], pulls=stats["pulls"],
            sync_steps=stats["sync_steps"])
        for index, registered, done, local_step, loss, last_seen, pushes, activity, examples \
                in stats["workers"]:
            reply.workers.add(task_index=index, registered=registered, done=done,
                              local_step=local_step, loss=loss, last_seen_s=last_seen,
                              pushes=pushes, activity=activity, examples=examples)
        for name, table in sorted(self.store.table_stats().items()):
            reply.tables.add(name=name, **table)
        return reply

    def Follow(self, request, context):
        """Streams the shard's updates (see psflow.ps.publisher): the catch-up, then the
        deltas as they are published, until the follower goes away, falls behind (ABORTED,
        "... resync") or the server stops (UNAVAILABLE)."""
        try:
            request = pb.FollowRequest.FromString(request)
        except DecodeError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"Follow: the request is not a FollowRequest: {exc}")
        if self.publisher is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"parameter server {self.store.shard} publishes no updates")
        try:
            follower, catch_up = self.publisher.follow(request.after_seq, request.incarnation)
        except RuntimeError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        context.add_callback(follower.close)
        try:
            yield from catch_up
            del catch_up
            while context.is_active():
                message = follower.take(timeout=1.0)
                if message is not None:
                    yield message
                elif follower.dropped is not None:
                    context.abort(grpc.StatusCode.ABORTED, follower.dropped)
                elif follower.closed:
                    context.abort(grpc.StatusCode.UNAVAILABLE,
                                  f"parameter server {self.store.shard} is stopping")
        finally:
            self.publisher.leave(follower)

    def CopyShard(self, request, context):
        """Streams a copy of the shard's state to a replica joining its chain (see
        psflow.ps.shard_copy)."""
        try:
            request = pb.CopyShardRequest.FromString(request)
        except DecodeError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"CopyShard: the request is not a CopyShardRequest: {exc}")
        try:
            yield from shard_copy.serve(self.store, self.replication, request)
        except Exception as exc:  # noqa: BLE001 -- every failure must become a status
            code = _status_of(exc)
            if code is None:
                log.exception("CopyShard failed")
                context.abort(grpc.StatusCode.INTERNAL, f"CopyShard: {type(exc).__name__}: {exc}")
            context.abort(code, str(exc))

    def _membership(self, membership):
        num_workers, done = membership
        return pb.WorkerResponse(num_workers=num_workers, done=done,
                                 checkpoint_root=self.store.checkpoint_root or "",
                                 lane=self.lane)
