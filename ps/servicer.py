"""The gRPC servicer: each handler decodes its request, calls the shard store and encodes the
answer. Errors become status codes; the server keeps serving whatever a request holds."""

import functools
import logging

import grpc

from psflow.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from psflow.proto import codec, wire
from psflow.proto import psflow_pb2 as pb
from psflow.proto import psflow_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_STATUS = [
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (codec.CodecError, grpc.StatusCode.INVALID_ARGUMENT),
    (FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
]


def _status_of(exc):
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            return code
    return None


def _handler(method):
    """Turns exceptions from the store into gRPC status codes with their messages; anything
    unexpected becomes INTERNAL (logged with its traceback) and the server carries on."""
    @functools.wraps(method)
    def handle(self, request, context):
        try:
            return method(self, request, context)
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


def _consistency(request):
    """(mode, replicas to aggregate, staleness) of a push; SSP with staleness 0 is SYNC."""
    if not request.HasField("consistency"):
        return pb.Consistency.ASYNC, 0, 0
    c = request.consistency
    if c.replicas_to_aggregate < 0 or c.staleness < 0:
        raise InvalidArgumentError(f"replicas_to_aggregate ({c.replicas_to_aggregate}) and "
                                   f"staleness ({c.staleness}) must not be negative")
    if c.mode == pb.Consistency.SSP and c.staleness == 0:
        return pb.Consistency.SYNC, 0, 0
    return c.mode, c.replicas_to_aggregate, c.staleness


def _serialize(reply):
    """A reply message's bytes; replies built as bytes already pass as they are."""
    return reply if isinstance(reply, bytes) else reply.SerializeToString()


def add_to_server(servicer, server):
    """Registers `servicer` like the generated add_ParameterServerServicer_to_server, with
    replies that may be ready-made bytes."""
    service = pb.DESCRIPTOR.services_by_name["ParameterServer"]
    handlers = {
        method.name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            # A push is read by Push itself, without copying its gradients.
            request_deserializer=None if method.name == "Push" else
            getattr(pb, method.input_type.name).FromString,
            response_serializer=_serialize)
        for method in service.methods}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


class ParameterServerServicer(pb_grpc.ParameterServerServicer):
    """The ParameterServer service over a ShardStore (see psflow.proto's psflow.proto)."""

    def __init__(self, store):
        self.store = store

    @_handler
    def DeclareVariables(self, request, context):
        for v in request.variables:
            if v.dtype not in codec.DTYPES:
                raise InvalidArgumentError(f"variable {v.name!r}: dtype {v.dtype!r} is not one "
                                           f"of {', '.join(codec.DTYPES)}")
        initialized = self.store.declare(
            [(v.name, v.dtype, tuple(v.shape)) for v in request.variables])
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
        store = self.store
        if request.HasField("commit") and not store.holds_global_step:
            store.sync.commit(request.commit.step, list(request.commit.workers))
        reply = pb.PullResponse(global_step=store.global_step if store.holds_global_step else -1)
        if store.holds_global_step:
            step, workers = store.sync.decision()
            reply.decision.step = step
            reply.decision.workers[:] = workers
        # The reply's bytes, values included (see ShardStore.pull_message).
        return store.pull_message(request.names, 1, reply.SerializeToString())

    @_handler
    def Push(self, request, context):
        # The request arrives as bytes; the gradients are read in place (see proto.wire).
        request = wire.Push(request) if isinstance(request, bytes) else wire.Push(
            request.SerializeToString())
        rule = self.store.rule(request.rule.name, dict(request.rule.hyper))
        gradients = [(g.name, g.values, g.indices, g.version) for g in request.gradients]
        not_ready = self.store.missing(request.pull)  # checked before anything is applied
        if not_ready:
            raise FailedPreconditionError(f"cannot return {not_ready[0]!r} with the push: it "
                                          "is not initialized yet")
        store = self.store
        mode, replicas, staleness_bound = _consistency(request)
        if mode == pb.Consistency.SYNC:
            checked, received = store.check_gradients(gradients)
            dropped, decision = store.sync.push(request.worker, request.global_step, checked,
                                                rule, received, replicas)
            reply = pb.PushResponse(dropped=dropped, global_step=store.global_step
                                    if store.holds_global_step else -1)
            if decision is not None:
                reply.decision.step = decision[0]
                reply.decision.workers[:] = decision[1]
        else:
            staleness, step = store.push(gradients, rule, worker=request.worker,
                                         increment_global_step=request.increment_global_step,
                                         global_step=request.global_step)
            if mode == pb.Consistency.SSP and store.holds_global_step:
                store.sync.ssp_barrier(request.worker, staleness_bound)
                step = store.global_step
            reply = pb.PushResponse(staleness=staleness,
                                    global_step=step if store.holds_global_step else -1)
        if request.pull:
            return store.pull_message(request.pull, 3, reply.SerializeToString())
        return reply

    @_handler
    def SaveShard(self, request, context):
        digest, step, size, names = self.store.save(request.path)
        return pb.SaveShardResponse(sha256=digest, global_step=-1 if step is None else step,
                                    bytes=size, variables=names)

    @_handler
    def RegisterWorker(self, request, context):
        return self._membership(self.store.register(request.task_index))

    @_handler
    def Heartbeat(self, request, context):
        return self._membership(self.store.heartbeat(request.task_index, request.local_step,
                                                     request.loss))

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
            uptime_s=stats["uptime_s"], dropped=stats["dropped"])
        for index, registered, done, local_step, loss, last_seen, pushes in stats["workers"]:
            reply.workers.add(task_index=index, registered=registered, done=done,
                              local_step=local_step, loss=loss, last_seen_s=last_seen,
                              pushes=pushes)
        return reply

    @staticmethod
    def _membership(membership):
        num_workers, done = membership
        return pb.WorkerResponse(num_workers=num_workers, done=done)
