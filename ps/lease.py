"""A replica's lease from the chain master, and the thread that renews it.

A replica heartbeats to the master every `interval_s`; each answer grants a lease of
`lease_s` counted from the heartbeat's sending. The master declares a replica dead only when
no heartbeat reached it for longer than a lease, so by the time it installs a chain without
the replica, the replica's own lease has run out: a replica cut off from the master refuses
every write and forwarded write (UNAVAILABLE "lease expired") and cannot go on acknowledging
writes the new chain will never see."""

import logging
import threading
import time

import grpc

from psflow.errors import UnavailableError
from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb
from psflow.transport import auth
from . import faults

log = logging.getLogger(__name__)

HEARTBEAT_S = 0.5


class Lease:
    """Until when a replica may acknowledge writes (time.monotonic); `required` is False for a
    replica run without a master (a lone shard, or a chain installed by hand)."""

    def __init__(self):
        self.required = False
        self._until = 0.0

    def require(self):
        self.required = True

    def renew(self, until):
        self._until = max(self._until, until)

    def remaining(self):
        return self._until - time.monotonic()

    def check(self, shard, what):
        """UnavailableError when a lease is required and has run out."""
        if self.required and self.remaining() <= 0:
            raise UnavailableError(f"shard {shard}: this replica's lease from the chain master "
                                   f"expired {-self.remaining():.1f} s ago; {what} is refused "
                                   "(ask the chain master for the shard's head)")


class LeaseKeeper:
    """The thread that heartbeats replica `address` of `shard` to the master at `master` and
    renews `replication`'s lease with each answer."""

    def __init__(self, master, shard, address, replication, token=None,
                 interval_s=HEARTBEAT_S):
        self.shard, self.address, self.replication = shard, address, replication
        self.interval_s = interval_s
        self._metadata = auth.call_metadata(token)
        self._channel = auth.open_channel(master, codec.MASTER_CHANNEL_OPTIONS)
        self._heartbeat = self._channel.unary_unary(
            "/psflow.ChainMaster/ReplicaHeartbeat",
            request_serializer=pb.ReplicaHeartbeatRequest.SerializeToString,
            response_deserializer=pb.ReplicaHeartbeatResponse.FromString)
        self._stopped = threading.Event()
        self._answered = False  # the master answered once (until then it may be starting)
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"ps{shard}-lease")
        replication.lease.require()

    def start(self):
        self._thread.start()
        return self

    def beat(self):
        """One heartbeat; True if the master answered (and the lease was renewed)."""
        faults.hit("heartbeat", self.shard, self.replication.config.index)
        sent = time.monotonic()
        config = self.replication.config
        try:
            answer = self._heartbeat(pb.ReplicaHeartbeatRequest(
                shard=self.shard, address=self.address, epoch=config.epoch,
                replicas=list(config.replicas) if config.epoch else []),
                timeout=max(self.interval_s, 1.0), metadata=self._metadata)
        except grpc.RpcError as exc:
            if self._answered:
                log.warning("shard %d: no heartbeat answer from the chain master: %s: %s",
                            self.shard, exc.code().name, exc.details())
            else:  # a replica may start before its master (as under launch): no alarm yet
                log.debug("shard %d: the chain master does not answer yet: %s", self.shard,
                          exc.code().name)
            return False
        except ValueError:  # the channel is closed: stopping
            return False
        self._answered = True
        if answer.chain.index >= 0:
            self.replication.lease.renew(sent + answer.lease_s)
        return True

    def _run(self):
        while not self._stopped.is_set():
            self.beat()
            self._stopped.wait(self.interval_s)

    def stop(self):
        self._stopped.set()
        self._channel.close()
