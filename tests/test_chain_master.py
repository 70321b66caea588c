"""The chain master (psflow.ps.chain_master) over in-process servers on 127.0.0.1: it installs
each shard's chain, a replica whose heartbeats stop (a fault stalls them, or the replica
stopped) is removed and the survivors carry on at the next epoch with every acknowledged
write, and a replica whose lease ran out refuses writes."""

import grpc
import numpy as np
import pytest

from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb
from psflow.proto import psflow_pb2_grpc as pb_grpc
from psflow.ps import chain, chain_master, faults
from psflow.ps.shard_server import ParameterServer
from test_replication import (
    TIMEOUT,
    assert_same_state,
    code_of,
    declare,
    state,
    step_requests,
    train,
)
from waiting import wait_for

LEASE_S = 0.4


class Replicas:
    """`count` servers of shard 0 under a chain master, heartbeating every 0.05 s."""

    def __init__(self, count):
        self.servers = [ParameterServer(shard=0, num_workers=1, heartbeat_s=0.05).start()
                        for _ in range(count)]
        self.addresses = [s.address for s in self.servers]
        self.master = chain_master.ChainMaster({0: self.addresses}, lease_s=LEASE_S,
                                               check_s=0.02).start()
        for s in self.servers:
            s.heartbeat_to(self.master.address)
        self.channels = [grpc.insecure_channel(a, options=codec.CHANNEL_OPTIONS)
                         for a in self.addresses]
        self.stubs = [pb_grpc.ParameterServerStub(c) for c in self.channels]
        wait_for(lambda: all(s.servicer.replication.lease.remaining() > 0
                             for s in self.servers), 5, "every replica's first lease")

    def wait_epoch(self, epoch):
        wait_for(lambda: self.master.chain(0)[0] >= epoch, 5, f"epoch {epoch}")
        return self.master.chain(0)

    def close(self):
        faults.clear()
        self.master.stop()
        for c in self.channels:
            c.close()
        for s in self.servers:
            s.stop(grace=0)


@pytest.fixture
def replicas():
    made = []

    def make(count):
        made.append(Replicas(count))
        return made[-1]
    yield make
    for r in made:
        r.close()


def with_epoch(epoch):
    return [(chain.EPOCH_METADATA, str(epoch))]


@pytest.mark.cluster  # a concurrency or timing run
def test_master_installs_the_chain_and_a_silent_head_is_replaced(replicas):
    r = replicas(2)
    assert r.master.chain(0) == (1, r.addresses)
    assert [s.servicer.replication.config.index for s in r.servers] == [0, 1]
    declare(r.stubs[0])
    train(r.stubs[0], 3)
    acknowledged = state(r.servers[0])
    stall = faults.install(faults.Fault("stall", "heartbeat", 0, 0, count=1000))
    assert stall.reached.wait(5)
    epoch, chain_now = r.wait_epoch(2)
    assert (epoch, chain_now) == (2, r.addresses[1:])
    assert r.servers[1].servicer.replication.config.is_head
    # The old head's lease ran out before the master moved on: it refuses writes.
    code, details = code_of(lambda: train(r.stubs[0], 1, seed=5))
    assert code == grpc.StatusCode.UNAVAILABLE and "lease" in details
    # The survivor holds every acknowledged write and carries on as the head.
    assert_same_state(state(r.servers[1]), acknowledged)
    train_epoch(r.stubs[1], 2, 2)
    assert state(r.servers[1])[3] == acknowledged[3] + 2


def train_epoch(stub, steps, epoch):
    rng = np.random.default_rng(9)
    for step in range(steps):
        lookup, push = step_requests(100 + step, rng, incarnation=9)
        stub.PullRows(lookup, timeout=TIMEOUT, metadata=with_epoch(epoch))
        stub.Push(push, timeout=TIMEOUT, metadata=with_epoch(epoch))


@pytest.mark.cluster  # a concurrency or timing run
def test_a_stopped_tail_is_removed_and_the_head_carries_on(replicas):
    r = replicas(3)
    declare(r.stubs[0])
    train(r.stubs[0], 2)
    r.servers[2].stop(grace=0)
    epoch, chain_now = r.wait_epoch(2)
    assert (epoch, chain_now) == (2, r.addresses[:2])
    train_epoch(r.stubs[0], 3, 2)
    assert_same_state(state(r.servers[0]), state(r.servers[1]))
    assert state(r.servers[1])[3] == 5


@pytest.mark.cluster  # a concurrency or timing run
def test_a_write_stalled_mid_push_is_not_lost_when_the_tail_is_replaced(replicas):
    r = replicas(3)
    declare(r.stubs[0])
    train(r.stubs[0], 1)
    # The middle replica applied the push and stalls before passing it on; the tail stops.
    stall = faults.install(faults.Fault("stall", "before-forward", 0, 1))
    future = r.stubs[0].Push.future(push_of(7), timeout=TIMEOUT)
    assert stall.reached.wait(5)
    r.servers[2].stop(grace=0)
    r.wait_epoch(2)
    stall.release()
    future.result()
    assert_same_state(state(r.servers[0]), state(r.servers[1]))


def push_of(step):
    push = pb.PushRequest(rule=pb.UpdateRule(name="sgd", hyper={"learning_rate": 0.5}),
                          increment_global_step=True, global_step=step, worker=0,
                          id=pb.PushId(incarnation=3, sequence=step))
    codec.encode(np.ones((4, 3), np.float32), push.gradients.add(name="w").values)
    return push


def test_master_refuses_a_bad_chain():
    with pytest.raises(ValueError, match="host:port"):
        chain_master.ChainMaster({0: ["nowhere"]})
    with pytest.raises(ValueError, match="SHARD=HOST:PORT"):
        chain_master.parse_chains(["0:127.0.0.1:1"])
    with pytest.raises(SystemExit):
        chain_master.main(["--chain", "x=1"])


@pytest.mark.cluster  # a master's death and its successor: over a second
def test_a_restarted_master_goes_on_with_the_chain_its_replicas_hold(replicas):
    r = replicas(3)
    declare(r.stubs[0])
    train(r.stubs[0], 2)
    r.servers[2].stop(grace=0)
    assert r.wait_epoch(2) == (2, r.addresses[:2])
    port = r.master.port
    r.master.stop()
    # Started again with the chain it was first given, it takes the replicas' newest one.
    r.master = chain_master.ChainMaster({0: r.addresses}, port=port, lease_s=LEASE_S,
                                        check_s=0.02).start()
    assert r.master.chain(0) == (3, r.addresses[:2])
    wait_for(lambda: all(s.servicer.replication.lease.remaining() > 0
                         for s in r.servers[:2]), 5, "leases from the new master")
    train_epoch(r.stubs[0], 3, 3)
    assert_same_state(state(r.servers[0]), state(r.servers[1]))
    assert state(r.servers[1])[3] == 5


def test_a_replica_reported_gone_leaves_the_chain_at_once(replicas):
    r = replicas(2)
    r.master.lease_s = 30.0  # its heartbeats alone would keep it in the chain for long
    declare(r.stubs[0])
    r.servers[1].stop(grace=0)
    channel = grpc.insecure_channel(r.master.address)
    gone = channel.unary_unary("/psflow.ChainMaster/ReplicaGone",
                               request_serializer=pb.ReplicaGoneRequest.SerializeToString,
                               response_deserializer=pb.ChainConfig.FromString)
    try:
        answer = gone(pb.ReplicaGoneRequest(shard=0, address=r.addresses[1]), timeout=TIMEOUT)
        assert (answer.epoch, list(answer.replicas)) == (2, r.addresses[:1])
        # The last replica of a shard is never removed: the chain keeps its only copy.
        answer = gone(pb.ReplicaGoneRequest(shard=0, address=r.addresses[0]), timeout=TIMEOUT)
        assert (answer.epoch, list(answer.replicas)) == (2, r.addresses[:1])
    finally:
        channel.close()
    train_epoch(r.stubs[0], 2, 2)
    assert state(r.servers[0])[3] == 2
