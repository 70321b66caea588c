"""Chain replication of a shard's writes (see docs/replication.md).

The head applies each write (Push, a training PullRows, a pull carrying a synchronous step's
commit, DeclareVariables, InitializeVariables, worker membership, and its own decisions of
synchronous steps: see ps/sync_chain.py) under the shard's order lock, numbering it in the
shard's log (`seq`), and passes the request bytes down the chain with Forward(epoch, seq).
Every replica applies the writes in log order (one that arrives early waits for its
predecessors), passes each on, and answers once its successor did: the tail's answer travels
back up, so the head answers the worker only once every replica has applied the write.
Applying the same requests in the same order gives the same values everywhere: row
initialization is a function of the table's spec and the key, and the update rules depend
only on the order. A push keeps its id on the way, so every replica remembers its answer: a
retry sent to another head later is answered, not applied again.

Reads are answered by the head, which holds every acknowledged write. A lone server (no chain
installed, or a chain of one) applies its writes as it always did, without the order lock.
"""

import logging
import threading
import time

import grpc

from psflow.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    UnavailableError,
)
from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb
from psflow.transport import auth
from . import faults
from .chain import ChainState, epoch_of
from .lease import Lease

log = logging.getLogger(__name__)

# The rpcs that change a shard (PullRows only when a selection trains: it creates rows and
# counts sightings). Worker membership is one of them, so that every replica knows when the
# job's workers are done (and stops then, as a lone server does).
WRITES = ("Push", "PullRows", "DeclareVariables", "InitializeVariables", "RegisterWorker",
          "Heartbeat", "WorkerDone")
# The head's own write of a synchronous step's decision (a StepDecision's bytes; see
# psflow.ps.sync_chain): no worker sends it.
SYNC_DECISION = "SyncDecision"
# What a replica takes forwarded: the writes, a Pull that commits a synchronous step, and the
# head's own writes.
FORWARDED = (*WRITES, "Pull", SYNC_DECISION)
# A write that waits this long for an earlier one of the log has lost it.
ORDER_TIMEOUT_S = 30.0
# The bound on forwarding one write down the rest of the chain.
FORWARD_TIMEOUT_S = 60.0
# How long a replica waits before passing on again a write its successor refused for a while.
RESEND_S = 0.05
# Writes passed on and not acknowledged yet, at most: each holds a thread on every replica
# below, so it stays under a server's threads (ParameterServer(threads=64)).
MAX_IN_FLIGHT = 32
# How often a head waiting for the tail's acknowledgement checks that it still is the head.
ACK_WAKE_S = 0.1


def is_write(method, request):
    """Whether the call `method` with its parsed `request` (Push: its bytes) changes the
    shard: a pull does when it commits a synchronous step or (PullRows) a selection trains."""
    if method in ("Pull", "PullRows"):
        return request.HasField("commit") or \
            (method == "PullRows" and any(k.train for k in request.keys))
    return method in WRITES


class Later:
    """A write's answer that comes after a wait outside the order lock (a synchronous
    step's decision): the head calls `finish()` once the write is acknowledged; a replica
    applying the write forwarded drops it."""

    __slots__ = ("finish",)

    def __init__(self, finish):
        self.finish = finish


class _Successor:
    """The channel a replica forwards its writes on."""

    def __init__(self, address, metadata):
        self.address = address
        self.metadata = metadata
        self.channel = auth.open_channel(address, codec.CHANNEL_OPTIONS)
        self.forward = self.channel.unary_unary(
            "/psflow.ParameterServer/Forward",
            request_serializer=pb.ForwardRequest.SerializeToString,
            response_deserializer=pb.ForwardResponse.FromString)

    def close(self):
        self.channel.close()


class Replication:
    """Replica side of a shard's chain. `apply_op(method, request bytes)` applies a forwarded
    write as the servicer applies a worker's; `token` is the job's, sent on Forward."""

    def __init__(self, shard, apply_op, token=None, max_in_flight=MAX_IN_FLIGHT):
        self.shard = shard
        self.chain = ChainState(shard)
        self._apply_op = apply_op
        self._order = threading.Condition()  # the order lock: one write applied at a time
        self.applied_seq = 0  # the last write of the log applied here
        self._unacked = {}  # seq -> (method, request bytes): passed on, not acknowledged yet
        self._in_flight = threading.Semaphore(max_in_flight)
        self._successor = None
        self._metadata = auth.call_metadata(token)
        self.lease = Lease()  # required once the replica heartbeats to a chain master
        # A replica joining a running chain: "copying" the shard's state, then "installed"
        # as the tail, taking no forwarded write until the last copy came (finish_join).
        self.joining = None

    @property
    def config(self):
        """The current chain.ChainConfig."""
        return self.chain.config

    def unacked(self):
        """[(seq, method, request bytes)] of the writes passed on and not acknowledged yet,
        in log order: what a new configuration of the chain must pass on again."""
        with self._order:
            return [(seq, *op) for seq, op in sorted(self._unacked.items())]

    def install(self, epoch, replicas, index):
        """Makes this server replica `index` of `replicas` at `epoch` (see ChainState.install);
        returns (the ChainConfig, the last log sequence applied here)."""
        with self._order:
            self._check_joining(epoch, replicas, index)
            previous, config = self.chain.install(epoch, replicas, index)
            if self.joining == "copying":
                self.joining = "installed"
            if config.successor != previous.successor:
                if self._successor is not None:
                    self._successor.close()
                self._successor = None if config.successor is None \
                    else _Successor(config.successor, self._metadata)
            if self._successor is None:
                self._unacked.clear()  # the tail's writes are acknowledged once applied
                self._order.notify_all()
            applied = self.applied_seq
            resend = self._successor is not None and config.epoch != previous.epoch and \
                bool(self._unacked)
        if config != previous:
            log.info("shard %d: replica %d of %d at epoch %d (%s)", self.shard, config.index,
                     len(config.replicas), config.epoch, ", ".join(config.replicas))
        if resend:
            threading.Thread(target=self._resend, args=(config,), daemon=True,
                             name=f"ps{self.shard}-resend").start()
        return config, applied

    def _check_joining(self, epoch, replicas, index):
        if self.joining == "copying" and index != len(replicas) - 1:
            raise FailedPreconditionError(
                f"shard {self.shard}: this replica is copying the shard's state to join its "
                f"chain; it can only be appended as the tail, not at place {index} of epoch "
                f"{epoch}")
        if self.joining == "installed":
            raise FailedPreconditionError(
                f"shard {self.shard}: this replica was appended to the chain and has not "
                f"caught up with it yet; refusing epoch {epoch}")

    def begin_join(self):
        """The replica starts copying the shard's state to join a running chain: until
        finish_join it holds no write of the log, and can only be installed as a tail."""
        with self._order:
            self.joining = "copying"

    def finish_join(self, applied_seq):
        """The replica holds the shard's state after write `applied_seq` of the log (the last
        copy, taken in the log's order): the writes forwarded to it after that go ahead."""
        with self._order:
            self.applied_seq = int(applied_seq)
            self.joining = None
            self._order.notify_all()

    def in_order(self, read):
        """read(applied_seq) while no write of the log is applied here: what it reads is the
        state after exactly the writes up to applied_seq."""
        with self._order:
            return read(self.applied_seq)

    def _resend(self, config):
        """Passes the writes not acknowledged yet down the chain of `config` again, in log
        order: a replica that applied one already passes it on without applying it again.
        A chain is installed from its tail up to its head, so the successor knows the epoch
        by now; a write that fails stays unacknowledged for the next configuration."""
        for seq, method, data in self.unacked():
            if self.chain.config != config:
                return
            successor = self._pass_on_again(seq)
            try:
                self._forward(successor, config, seq, method, data)
            except (FailedPreconditionError, UnavailableError) as exc:
                log.warning("shard %d: write %d not passed on again at epoch %d: %s",
                            self.shard, seq, config.epoch, exc)
                return

    def _pass_on_again(self, seq):
        with self._order:
            successor = self._successor
            if successor is not None:
                self._in_flight.acquire()
            return successor

    def handle(self, method, raw, request, context, call):
        """A worker's call `method` (its parsed `request`, and `raw`, its bytes): checks its
        epoch, refuses a write anywhere but at the head, and runs `call()`, for a write in
        the chain's order and passed down the chain."""
        write = is_write(method, request)
        epoch = epoch_of(context)
        config = self.chain.check_epoch(epoch, f"the {method} call")
        if config.epoch == 0 or not write:
            result = call()
        else:
            self._check_head(config, method)
            self.lease.check(self.shard, f"the {method} call")
            result = self._write(method, raw, call, epoch)
        return result.finish() if isinstance(result, Later) else result

    def _check_head(self, config, method):
        if not config.is_head:
            raise FailedPreconditionError(
                f"shard {self.shard} replica {config.index} is not the head of its chain at "
                f"epoch {config.epoch}: send {method} to the head, {config.head}")

    def _write(self, method, raw, call, epoch):
        data = bytes(raw)
        with self._order:
            # Checked again under the order lock: a new chain may have come meanwhile.
            config = self.chain.check_epoch(epoch, f"the {method} call")
            self._check_head(config, method)
            self._check_open(config, method)
            result = call()
            seq, successor = self._number(config, method, data)
        if seq is not None:
            self._forward(successor, config, seq, method, data)
        return result

    def _check_open(self, config, what):
        """Under the order lock, before a write is applied: a replica with a successor that
        is stopping (close() dropped its channel) must not apply it, since it would
        acknowledge it alone."""
        if config.epoch >= 1 and not config.is_tail and self._successor is None:
            raise UnavailableError(f"shard {self.shard}: replica {config.index} is stopping; "
                                   f"{what} was not applied")

    def _number(self, config, method, data):
        """Under the order lock, once the head applied a write: (its sequence, the successor
        to pass it on to), or (None, None) in a chain of one."""
        self.applied_seq += 1
        self._order.notify_all()
        if config.is_tail:  # a chain of one: nobody to pass it on to
            return None, None
        return self.applied_seq, self._pass_on(self.applied_seq, method, data)

    def write_own(self, method, apply):
        """The head's own write of the log, `method` one of FORWARDED that no worker sends:
        apply() runs under the order lock and returns the bytes every other replica applies
        (apply_op(method, bytes)), or None when there is nothing to write after all. Passed
        down the chain as a worker's write is; returns whether it wrote."""
        with self._order:
            config = self.chain.config
            self._check_head(config, method)
            self.lease.check(self.shard, f"the head's {method}")
            self._check_open(config, method)
            data = apply()
            if data is None:
                return False
            seq, successor = self._number(config, method, data)
        if seq is not None:
            self._forward(successor, config, seq, method, data)
        return True

    def wait_acknowledged(self, deadline, what):
        """Waits until the tail acknowledged every write applied here so far (the head
        answers a pusher waiting for a step's decision only then). Refuses `what` (the call
        waiting) once this replica is no longer the head or its lease ran out (the worker
        asks for the new chain); DeadlineExceededError at time.monotonic() `deadline`."""
        with self._order:
            last = self.applied_seq
            while any(seq <= last for seq in self._unacked):
                self._check_head(self.chain.config, what)
                self.lease.check(self.shard, f"the {what} call")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeadlineExceededError(
                        f"shard {self.shard}: write {min(self._unacked)} was not acknowledged "
                        "by the chain's tail in time")
                self._order.wait(min(ACK_WAKE_S, remaining))

    def _pass_on(self, seq, method, data):
        """Under the order lock: the successor to forward write `seq` to (None at the tail),
        with a place among the writes in flight taken (in log order, so the earliest write
        not acknowledged is always on its way)."""
        successor = self._successor
        if successor is not None:
            self._unacked[seq] = (method, data)
            self._in_flight.acquire()
        return successor

    def _forward(self, successor, config, seq, method, data):
        """Passes write `seq` on and waits for the rest of the chain to apply it."""
        faults.hit("before-forward", self.shard, config.index)
        if successor is None:
            self._acknowledged(seq)
            return
        try:
            self._send(successor, config, seq, method, data)
        finally:
            self._in_flight.release()
        self._acknowledged(seq)
        faults.hit("before-ack", self.shard, config.index)

    def _acknowledged(self, seq):
        with self._order:
            self._unacked.pop(seq, None)
            self._order.notify_all()

    def _send(self, successor, config, seq, method, data):
        """Forward(write `seq`) until the successor applied it. A successor that refused it
        for a while only (its lease ran out for a moment, an earlier write is late) gets it
        again while the chain stays `config`: giving up would leave a hole in its log, and
        every later write would wait for it until the chain changes. A successor that cannot
        be reached is the chain master's business: the caller is told at once. Once the chain
        changed, the write is acknowledged if this replica became the tail, else the caller
        is told (the new configuration passes it on again)."""
        deadline = time.monotonic() + FORWARD_TIMEOUT_S
        while True:
            try:
                successor.forward(pb.ForwardRequest(epoch=config.epoch, seq=seq, method=method,
                                                    request=data),
                                  timeout=max(deadline - time.monotonic(), 0.1),
                                  metadata=successor.metadata)
                return
            except grpc.RpcError as exc:
                details = exc.details() or ""
                retry = (exc.code() == grpc.StatusCode.UNAVAILABLE and "lease" in details) or \
                    (exc.code() == grpc.StatusCode.FAILED_PRECONDITION and "has not in" in details)
                if retry and self.chain.config == config and \
                        time.monotonic() + RESEND_S < deadline:
                    time.sleep(RESEND_S)
                    continue
                if self._now_tail(config, seq):
                    return
                kind = FailedPreconditionError \
                    if exc.code() == grpc.StatusCode.FAILED_PRECONDITION else UnavailableError
                raise kind(f"shard {self.shard}: replica {successor.address} did not apply "
                           f"write {seq} ({method}): {exc.code().name}: "
                           f"{exc.details()}") from None
            except ValueError:  # gRPC's word for a closed channel: stopping, or a new chain
                if self._now_tail(config, seq):
                    return
                raise UnavailableError(f"shard {self.shard}: replica {config.index} is stopping "
                                       f"or left epoch {config.epoch}; write {seq} ({method}) "
                                       "was not passed on") from None

    def _now_tail(self, config, seq):
        """Whether a write `seq` this replica applied at `config` is acknowledged after all:
        a newer chain made this replica its tail (every replica after it was removed), so
        every replica of the shard's chain holds it."""
        current = self.chain.config
        return current.epoch > config.epoch and current.is_tail and self.applied_seq >= seq

    def forwarded(self, request):
        """Applies the ForwardRequest `request` in log order and passes it on; returns the
        last log sequence applied here once the rest of the chain applied it."""
        what = f"forwarded write {request.seq}"
        config = self.chain.check_epoch(request.epoch, what)
        if config.epoch == 0 or config.is_head:
            raise FailedPreconditionError(f"shard {self.shard}: the head of a chain (or a lone "
                                          f"server) takes no {what}")
        if request.seq < 1 or request.method not in FORWARDED:
            raise InvalidArgumentError(f"{what}: expected a sequence from 1 and one of "
                                       f"{', '.join(FORWARDED)}, got {request.method!r}")
        self.lease.check(self.shard, what)
        failure = None
        with self._order:
            if not self._order.wait_for(lambda: self.joining is None and
                                        self.applied_seq >= request.seq - 1, ORDER_TIMEOUT_S):
                waiting = "its copy of the shard's state" if self.joining else \
                    f"write {self.applied_seq + 1}"
                raise FailedPreconditionError(
                    f"shard {self.shard} replica {config.index}: {what} arrived, but "
                    f"{waiting} has not in {ORDER_TIMEOUT_S:g} s")
            config = self.chain.check_epoch(request.epoch, what)
            self._check_open(config, what)
            if self.applied_seq == request.seq - 1:
                faults.hit("before-apply", self.shard, config.index)
                try:
                    self._apply_op(request.method, request.request)
                except Exception as exc:  # noqa: BLE001 -- the log goes on; the head is told
                    log.exception("shard %d replica %d: %s (%s) failed where the head applied "
                                  "it", self.shard, config.index, what, request.method)
                    failure = exc
                self.applied_seq = request.seq
                self._order.notify_all()
            successor = self._pass_on(request.seq, request.method, request.request)
            applied = self.applied_seq
        self._forward(successor, config, request.seq, request.method, request.request)
        if failure is not None:
            raise FailedPreconditionError(
                f"shard {self.shard} replica {config.index} could not apply {what} "
                f"({request.method}): {type(failure).__name__}: {failure}")
        return applied

    def close(self):
        with self._order:
            if self._successor is not None:
                self._successor.close()
                self._successor = None
