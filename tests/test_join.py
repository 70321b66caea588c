"""A replica joining a running chain (psflow.ps.join, psflow.ps.shard_copy), over in-process
servers on 127.0.0.1: it copies the tail's state while a worker keeps training, the master
appends it as the tail, and every replica then holds the same state, every acknowledged write
included; a restarted replica at a known address is removed first; a join whose tail changed
fails and says so."""

import threading

import grpc
import numpy as np
import pytest

from psflow.checkpoint import read_shard
from psflow.launcher.resources import free_ports
from psflow.proto import psflow_pb2 as pb
from psflow.proto import psflow_pb2_grpc as pb_grpc
from psflow.ps import chain_master, faults
from psflow.ps.join import Joiner, JoinFailed
from psflow.ps.shard_copy import CopyApplier, copy_pieces
from psflow.ps.shard_server import ParameterServer
from psflow.ps.shard_store import ShardStore
from psflow.table_changes import ChangesLost
from psflow.worker.client import ShardClient
from test_chain_master import replicas  # noqa: F401 -- the fixture
from test_replication import TIMEOUT, assert_same_state, declare, state, step_requests
from waiting import wait_for


@pytest.fixture
def cluster(replicas):  # noqa: F811 -- test_chain_master's fixture: chains under a master
    return replicas


RETRIED = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE)


class Trainer:
    """A worker training through the head of shard 0's chain until stopped, retrying a write
    the chain refused while it changed (a push keeps its id, so it is applied once)."""

    def __init__(self, chain, incarnation=4):
        self.chain, self.steps, self.incarnation = chain, 0, incarnation
        self._stop = threading.Event()
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def head(self):
        head = self.chain.master.chain(0)[1][0]
        return self.chain.stubs[self.chain.addresses.index(head)]

    def _call(self, method, request):
        for _ in range(200):
            try:
                return getattr(self.head(), method)(request, timeout=TIMEOUT)
            except grpc.RpcError as exc:
                if exc.code() not in RETRIED:
                    raise
            self._stop.wait(0.02)
        raise AssertionError(f"{method} kept failing")

    def _run(self):
        rng = np.random.default_rng(3)
        try:
            while not self._stop.is_set() or self.steps < 5:
                lookup, push = step_requests(self.steps, rng, incarnation=self.incarnation)
                self._call("PullRows", lookup)
                self._call("Push", push)
                self.steps += 1
        except BaseException as exc:  # noqa: BLE001 -- reported by stop()
            self.error = exc

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self._stop.set()
        self.thread.join(60)
        assert self.error is None, self.error
        return self.steps


def add_replica(chain):
    """A new server of shard 0 heartbeating to the master, known to the test's stubs."""
    server = ParameterServer(shard=0, num_workers=1, heartbeat_s=0.05).start()
    server.heartbeat_to(chain.master.address)
    chain.servers.append(server)
    chain.addresses.append(server.address)
    channel = grpc.insecure_channel(server.address)
    chain.channels.append(channel)
    chain.stubs.append(pb_grpc.ParameterServerStub(channel))
    return server


def joiner(chain, server):
    return Joiner(server, chain.master.address, server.address)


@pytest.mark.cluster  # a concurrency run of a second or more
def test_a_replica_joins_while_training_goes_on_and_holds_every_write(cluster):
    r = cluster(2)
    declare(r.stubs[0])
    trainer = Trainer(r).start()
    wait_for(lambda: trainer.steps >= 20, 30, "some training before the join")
    new = add_replica(r)
    assert joiner(r, new).run() == "joined"
    epoch, chain_now = r.master.chain(0)
    assert chain_now == r.addresses and new.servicer.replication.config.is_tail
    at_join = trainer.steps
    wait_for(lambda: trainer.steps >= at_join + 20, 30, "training after the join")
    steps = trainer.stop()
    expected = state(r.servers[0])
    assert expected[3] == steps  # every push applied once
    for server in r.servers[1:]:
        assert_same_state(state(server), expected)
    # The newcomer carries the chain when the first two go.
    r.servers[0].stop(grace=0)
    r.servers[1].stop(grace=0)
    wait_for(lambda: r.master.chain(0)[1] == [new.address], 10, "a chain of the newcomer")
    rng = np.random.default_rng(11)
    lookup, push = step_requests(steps, rng, incarnation=8)
    r.stubs[2].PullRows(lookup, timeout=TIMEOUT)
    assert r.stubs[2].Push(push, timeout=TIMEOUT).global_step == steps + 1


@pytest.mark.cluster  # a concurrency or timing run
def test_a_restarted_replica_at_a_known_address_is_removed_then_copies(cluster):
    r = cluster(2)
    declare(r.stubs[0])
    Trainer(r).start().stop()
    # The tail restarts on its own port: its state is gone.
    tail = r.servers[1]
    address = tail.address
    port = tail.port
    tail.stop(grace=0)
    again = ParameterServer(shard=0, num_workers=1, heartbeat_s=0.05, port=port).start()
    again.heartbeat_to(r.master.address)
    r.servers[1] = again
    assert Joiner(again, r.master.address, address).run() == "joined"
    epoch, chain_now = r.master.chain(0)
    assert chain_now == r.addresses and epoch == 3  # removed at 2, appended at 3
    # (A table's slots copied before the rule's first push here are set by that push.)
    Trainer(r, incarnation=5).start().stop()
    assert_same_state(state(again), state(r.servers[0]))


def test_a_founder_takes_its_place_before_and_after_the_chain_is_installed():
    port = free_ports("127.0.0.1", 1)[0]
    address = f"127.0.0.1:{port}"
    started = []
    master = threading.Thread(target=lambda: started.append(
        chain_master.ChainMaster({0: [address]}, lease_s=0.4, check_s=0.02).start()),
        daemon=True)
    master.start()  # it waits for its replica to install the chain
    server = ParameterServer(shard=0, num_workers=1, heartbeat_s=0.05, port=port).start()
    try:
        master.join(10)
        server.heartbeat_to(started[0].address)
        assert Joiner(server, started[0].address, address).run() == "founder"
        assert started[0].chain(0) == (1, [address])
        # Asked by the same process before it heard of the install: a founder still.
        channel = grpc.insecure_channel(started[0].address)
        join = channel.unary_unary("/psflow.ChainMaster/JoinChain",
                                   request_serializer=pb.JoinChainRequest.SerializeToString,
                                   response_deserializer=pb.JoinChainResponse.FromString)
        answer = join(pb.JoinChainRequest(shard=0, address=address, epoch=0,
                                          incarnation=server.store.tables.incarnation),
                      timeout=TIMEOUT)
        channel.close()
        assert answer.action == pb.JoinChainResponse.FOUNDER
        assert started[0].chain(0) == (1, [address])
    finally:
        server.stop(grace=0)
        if started:
            started[0].stop()


def test_a_lone_replica_restarted_takes_its_place_empty(cluster):
    r = cluster(1)
    server = r.servers[0]
    address, port = server.address, server.port
    server.stop(grace=0)
    again = ParameterServer(shard=0, num_workers=1, heartbeat_s=0.05, port=port).start()
    again.heartbeat_to(r.master.address)
    r.servers[0] = again
    assert Joiner(again, r.master.address, address).run() == "alone"
    assert r.master.chain(0) == (2, [address])


@pytest.mark.cluster  # a concurrency run of a second or more
def test_a_join_whose_tail_changed_fails_naming_it(cluster):
    r = cluster(2)
    declare(r.stubs[0])
    Trainer(r).start().stop()
    new = add_replica(r)
    j = joiner(r, new)
    # The tail goes silent once the copy began: the master replaces the chain meanwhile.
    stall = faults.install(faults.Fault("stall", "heartbeat", 0, 1, count=1000))
    original = j._copy

    def copy_then_wait(*args):
        end = original(*args)
        assert stall.reached.wait(5)
        wait_for(lambda: r.master.chain(0)[1] == r.addresses[:1], 10, "the tail removed")
        return end
    j._copy = copy_then_wait
    with pytest.raises(JoinFailed, match="no longer its tail"):
        j.run()
    assert r.master.chain(0)[1] == r.addresses[:1]


def test_a_copy_and_its_deltas_rebuild_the_store_removals_and_memory_included():
    source = ShardStore(shard=0, num_workers=2)
    source.declare([("w", "float32", (3,))])
    source.declare_tables([{"name": "t", "dim": 2, "dtype": "float32",
                            "initializer": {"kind": "random_normal", "stddev": 0.1,
                                            "seed": 3}, "filter_freq": 2}])
    source.initialize({"w": np.arange(3, dtype=np.float32)})
    keys = np.arange(1000, dtype=np.int64)
    source.lookup_keys([("t", keys, None, True)] * 2, global_step=1)  # seen twice: admitted
    source.lookup_keys([("t", np.arange(5000, 5010, dtype=np.int64), None, True)])  # once
    source.register(0)
    source.done(1)
    target = ShardStore(shard=0, num_workers=2)
    servicer_like = _Writes(target)
    applier = CopyApplier(target, servicer_like.apply)
    end = _apply(applier, copy_pieces(source, chunk_rows=300))
    assert applier.rows == 1000
    source.tables.remove_keys("t", keys[:10])
    source.lookup_keys([("t", np.arange(2000, 2100, dtype=np.int64), None, True)] * 2)
    end = _apply(applier, copy_pieces(source, end.upto, end.incarnation, chunk_rows=64))
    for store in (source, target):
        with store.tables.held["t"].lock:
            assert len(store.tables.held["t"].table) == 1090
    assert _table(source) == _table(target)
    np.testing.assert_array_equal(target.variables.held["w"].value, np.arange(3))
    assert [row[:3] for row in target.members.rows()] == [(0, True, False), (1, False, True)]
    with pytest.raises(ChangesLost, match="incarnation"):
        list(copy_pieces(source, end.upto, end.incarnation + 1))


class _Writes:
    """Applies DeclareVariables and InitializeVariables to a store as the servicer does."""

    def __init__(self, store):
        from psflow.ps.servicer import ParameterServerServicer
        self.servicer = ParameterServerServicer(store)

    def apply(self, method, data):
        self.servicer.apply_write(method, data)


def _apply(applier, pieces):
    for piece in pieces:
        end = applier.apply(pieces_of(piece))
        if end is not None:
            return end
    raise AssertionError("no end")


def pieces_of(piece):
    return pb.ShardPiece.FromString(piece.SerializeToString())  # as it travels


def _table(store):
    held = store.tables.held["t"]
    with held.lock:
        fields = held.table.state()
        order = np.argsort(fields["keys"])
        entry_order = np.argsort(fields["entry_keys"])
        return (fields["keys"][order].tolist(), fields["values"][order].tolist(),
                sorted(zip(fields["entry_keys"][entry_order].tolist(),
                           fields["entry_freq"][entry_order].tolist(), strict=True)))


@pytest.mark.cluster  # a replica's death and the master's detection: a second or more
def test_a_tail_that_dies_mid_copy_fails_the_join_and_the_next_one_copies_the_new_tail(
        cluster):
    r = cluster(2)
    declare(r.stubs[0])
    Trainer(r).start().stop()
    first = add_replica(r)
    stall = faults.install(faults.Fault("stall", "mid-copy", 0, 1))
    failed = []
    thread = threading.Thread(target=lambda: failed.append(_join_error(r, first)))
    thread.start()
    assert stall.reached.wait(10)
    r.servers[1].stop(grace=0)  # the tail dies while it sends its copy
    stall.release()
    thread.join(30)
    assert "copying shard 0's state from" in failed[0]
    wait_for(lambda: r.master.chain(0)[1] == r.addresses[:1], 10, "the dead tail removed")
    second = add_replica(r)
    assert joiner(r, second).run() == "joined"
    assert r.master.chain(0)[1] == [r.addresses[0], second.address]
    Trainer(r, incarnation=6).start().stop()
    assert_same_state(state(second), state(r.servers[0]))


def _join_error(chain, server):
    try:
        joiner(chain, server).run()
    except JoinFailed as exc:
        return str(exc)
    return "joined"


@pytest.mark.cluster  # a replica's death and the master's detection: a second or more
def test_a_head_that_dies_mid_checkpoint_leaves_the_checkpoint_to_the_new_head(tmp_path):
    servers = [ParameterServer(shard=0, num_workers=1, heartbeat_s=0.05,
                               checkpoint_root=str(tmp_path)).start() for _ in range(2)]
    addresses = [s.address for s in servers]
    master = chain_master.ChainMaster({0: addresses}, lease_s=0.4, check_s=0.02).start()
    for s in servers:
        s.heartbeat_to(master.address)
    client = ShardClient(0, addresses[0], timeout=TIMEOUT, token="",
                         chain_master=master.address)
    try:
        declare(client.stub)
        stall = faults.install(faults.Fault("stall", "mid-checkpoint", 0, 0))
        saved = []
        path = str(tmp_path / "shard-0.npz")
        thread = threading.Thread(target=lambda: saved.append(
            client.call("SaveShard", pb.SaveShardRequest(path=path))))
        thread.start()
        assert stall.reached.wait(10)
        servers[0].stop(grace=0)  # the head dies before it wrote the checkpoint
        stall.release()
        thread.join(30)
        assert saved and saved[0].variables == ["w"]
        assert master.chain(0)[1] == addresses[1:]
        values, _, _ = read_shard(path, saved[0].sha256)
        np.testing.assert_array_equal(values["w"], np.ones((4, 3), np.float32))
    finally:
        faults.clear()
        client.close()
        master.stop()
        for s in servers:
            s.stop(grace=0)
