"""A replica joining its shard's running chain (`python -m psflow.ps --chain-master M --join`).

It asks the chain master where to copy the shard's state from (JoinChain): a replica named
among the chain's founders before the chain was installed simply takes its place (FOUNDER);
the shard's only replica, restarted, takes its place empty (ALONE: the chief restores the
shard from the checkpoint, as for a lone server). Otherwise it copies the state of the
chain's tail while training goes on (CopyShard: every row, then rounds of the rows changed
since the previous round until a round brings few), then asks the master to append it
(`ready`): the master installs the chain with the joiner as its tail, from the tail up, and
the joiner takes a last copy of the rows changed since its last round, read while the old
tail applies no write, which names the last write of the log it holds. The writes the old tail
forwards to it meanwhile wait, and go ahead after that one.

A join that fails (the tail changed or died, the master refused) is not resumed: the replica
stops, and whoever started it starts a new one, which copies from the start."""

import logging
import time

import grpc

from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb
from psflow.transport import auth
from .shard_copy import CopyApplier

log = logging.getLogger(__name__)

# A catch-up round that brings fewer rows than this is the last before the final copy (taken
# while the tail applies no write, so it should be short).
CAUGHT_UP_ROWS = 20_000
MAX_ROUNDS = 20
# How long to keep asking a master that does not answer, or has not installed the chain yet.
MASTER_WAIT_S = 60.0
COPY_TIMEOUT_S = 3600.0
JOIN_TIMEOUT_S = 60.0


class JoinFailed(Exception):
    """The replica could not join its chain; the message says why."""


class Joiner:
    """Joins `server` (a running ps.shard_server.ParameterServer), known to the others as
    `address`, to its shard's chain held by the chain master at `master`."""

    def __init__(self, server, master, address, token=None):
        self.server, self.master, self.address = server, master, address
        self.shard = server.shard
        self.store = server.store
        self.replication = server.servicer.replication
        self._metadata = auth.call_metadata(token)
        self._channel = auth.open_channel(master, codec.MASTER_CHANNEL_OPTIONS)
        self._join = self._channel.unary_unary(
            "/psflow.ChainMaster/JoinChain",
            request_serializer=pb.JoinChainRequest.SerializeToString,
            response_deserializer=pb.JoinChainResponse.FromString)
        self.applier = CopyApplier(self.store, server.servicer.apply_write)
        self.outcome = None  # "founder", "alone" or "joined"

    def run(self):
        """Joins; returns the outcome, or raises JoinFailed."""
        try:
            answer = self._ask(pb.JoinChainRequest(
                shard=self.shard, address=self.address, epoch=self.replication.config.epoch,
                incarnation=self.store.tables.incarnation))
            if answer.action == pb.JoinChainResponse.FOUNDER:
                log.info("shard %d: %s founds the chain", self.shard, self.address)
                self.outcome = "founder"
            elif answer.action == pb.JoinChainResponse.ALONE:
                log.info("shard %d: %s is the shard's only replica; it starts empty",
                         self.shard, self.address)
                self.outcome = "alone"
            elif answer.action == pb.JoinChainResponse.COPY:
                self._copy_and_join(answer.chain)
                self.outcome = "joined"
            else:
                raise JoinFailed(f"the chain master answered {answer.action}")
            return self.outcome
        finally:
            self._channel.close()

    def _ask(self, request, wait_s=MASTER_WAIT_S):
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return self._join(request, timeout=JOIN_TIMEOUT_S, metadata=self._metadata,
                                  wait_for_ready=True)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise JoinFailed(f"the chain master at {self.master} refused the join: "
                                     f"{exc.code().name}: {exc.details()}") from None
            time.sleep(0.2)

    def _copy_and_join(self, chain):
        tail = chain.replicas[-1]
        self.replication.begin_join()
        started = time.monotonic()
        channel = auth.open_channel(tail, codec.CHANNEL_OPTIONS)
        copy = channel.unary_stream("/psflow.ParameterServer/CopyShard",
                                    request_serializer=pb.CopyShardRequest.SerializeToString,
                                    response_deserializer=pb.ShardPiece.FromString)
        try:
            end = self._copy(copy, tail, pb.CopyShardRequest(epoch=chain.epoch))
            full_rows, full_s = self.applier.rows, time.monotonic() - started
            rounds = 0
            while rounds < MAX_ROUNDS:
                before = self.applier.rows
                end = self._copy(copy, tail, pb.CopyShardRequest(
                    epoch=chain.epoch, since=end.upto, incarnation=end.incarnation))
                rounds += 1
                if self.applier.rows - before < CAUGHT_UP_ROWS:
                    break
            answer = self._ask(pb.JoinChainRequest(shard=self.shard, address=self.address,
                                                   ready=True, copied_from=tail), wait_s=0)
            if answer.action != pb.JoinChainResponse.JOINED:
                raise JoinFailed(f"the chain master did not append {self.address}")
            final_started = time.monotonic()
            before = self.applier.rows
            end = self._copy(copy, tail, pb.CopyShardRequest(
                epoch=answer.chain.epoch, since=end.upto, incarnation=end.incarnation,
                final=True))
            self.replication.finish_join(end.applied_seq)
        finally:
            channel.close()
        log.info("shard %d: %s copied %d rows from %s in %.1f s, caught up in %d rounds, and "
                 "joined the chain at epoch %d (%s); its last copy (%d rows) took %.3f s",
                 self.shard, self.address, full_rows, tail, full_s, rounds,
                 answer.chain.epoch, ", ".join(answer.chain.replicas),
                 self.applier.rows - before, time.monotonic() - final_started)

    def _copy(self, copy, tail, request):
        """Applies one copy from `tail`; returns its ShardCopyEnd."""
        try:
            for piece in copy(request, timeout=COPY_TIMEOUT_S, metadata=self._metadata):
                end = self.applier.apply(piece)
                if end is not None:
                    return end
        except grpc.RpcError as exc:
            raise JoinFailed(f"copying shard {self.shard}'s state from {tail} failed: "
                             f"{exc.code().name}: {exc.details()}") from None
        raise JoinFailed(f"the copy of shard {self.shard}'s state from {tail} ended early")
