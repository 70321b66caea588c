"""A worker's view of a replicated shard: where its chain's head is, from the chain master
(ps/chain_master.py), and which failures of a call mean "the chain changed, ask again"."""

import time

import grpc

from psflow.errors import FailedPreconditionError, UnavailableError
from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb
from psflow.transport import auth

# How often a client whose call failed asks the master whether the chain changed.
POLL_S = 0.05
# How long it asks before calling the same head again (it may have been unreachable for a
# moment only, e.g. still starting).
SAME_HEAD_AGAIN_S = 0.5
# Words of a FAILED_PRECONDITION refusal that a new chain (or the same call at the new head)
# answers: the caller's epoch is stale, it called a replica that is not the head, or the
# head's successor was at another epoch.
_CHAIN_REFUSALS = ("stale epoch", "is not the head", "did not apply write", "left epoch")


def chain_changed(exc):
    """Whether the psflow error `exc` of a call to a shard's head may be cured by asking the
    chain master for the shard's chain and calling its head again. A replica that stops
    cancels the calls it is serving (the worker cancels none of its own)."""
    if isinstance(exc, UnavailableError) or ": CANCELLED:" in str(exc):
        return True
    return isinstance(exc, FailedPreconditionError) and \
        any(words in str(exc) for words in _CHAIN_REFUSALS)


class ChainLookup:
    """GetChain of shard `shard` at the chain master `master`."""

    def __init__(self, master, shard, token):
        self.master, self.shard = master, shard
        self._metadata = auth.call_metadata(token)
        self._channel = auth.open_channel(master, codec.MASTER_CHANNEL_OPTIONS)
        self._get = self._channel.unary_unary(
            "/psflow.ChainMaster/GetChain",
            request_serializer=pb.GetChainRequest.SerializeToString,
            response_deserializer=pb.ChainConfig.FromString)

    def current(self, timeout, wait_for_ready=False):
        """(epoch, head address) of the shard's chain; None when the master did not answer."""
        try:
            chain = self._get(pb.GetChainRequest(shard=self.shard), timeout=timeout,
                              wait_for_ready=wait_for_ready, metadata=self._metadata)
        except grpc.RpcError:
            return None
        return (chain.epoch, chain.replicas[0]) if chain.replicas else None

    def newer(self, epoch, deadline):
        """(epoch, head) of a chain newer than `epoch`, asking until time.monotonic() passes
        `deadline`; None when the chain stayed at `epoch` (the same head is to be called
        again)."""
        while True:
            found = self.current(timeout=max(min(1.0, deadline - time.monotonic()), 0.05))
            if found is not None and found[0] > epoch:
                return found
            if time.monotonic() + POLL_S > deadline:
                return None
            time.sleep(POLL_S)

    def close(self):
        self._channel.close()
