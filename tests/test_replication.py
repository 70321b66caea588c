"""A shard run as a chain of replicas (psflow.ps.replication) over real gRPC on 127.0.0.1:
every replica ends with the values, slots and table rows a lone server would hold, a write is
answered only once the tail applied it, a stale epoch is refused and a repeated push is
applied once, also after the head changed."""

import random
import threading
import time

import grpc
import numpy as np
import pytest

from psflow.checkpoint import ShardContents
from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb
from psflow.proto import psflow_pb2_grpc as pb_grpc
from psflow.ps import chain, faults
from psflow.ps.shard_server import ParameterServer
from psflow.worker import client
from waiting import wait_for

ADAGRAD = pb.UpdateRule(name="adagrad", hyper={"learning_rate": 0.1})
TIMEOUT = 30


class Chain:
    """`replicas` servers of shard `shard` (each its own ParameterServer), and a stub to
    each."""

    def __init__(self, replicas, shard=0, checkpoint_root=None):
        self.servers = [ParameterServer(shard=shard, num_workers=1,
                                        checkpoint_root=checkpoint_root).start()
                        for _ in range(replicas)]
        self.channels = [grpc.insecure_channel(s.address, options=codec.CHANNEL_OPTIONS)
                         for s in self.servers]
        self.stubs = [pb_grpc.ParameterServerStub(c) for c in self.channels]

    def install(self, epoch, order=None):
        """Makes the servers (in `order` of their indices, head first) a chain at `epoch`."""
        order = list(range(len(self.servers))) if order is None else order
        addresses = [self.servers[i].address for i in order]
        for place, i in enumerate(order):
            self.stubs[i].InstallChain(pb.ChainConfig(epoch=epoch, replicas=addresses,
                                                      index=place), timeout=TIMEOUT)
        return self

    @property
    def head(self):
        return self.stubs[0]

    def close(self):
        for c in self.channels:
            c.close()
        for s in self.servers:
            s.stop(grace=0)


@pytest.fixture
def chains():
    """chains(R, epoch, shard, checkpoint_root): a chain of R replicas of `shard` at `epoch`;
    chains(1) is a lone server."""
    made = []

    def make(replicas, epoch=1, shard=0, checkpoint_root=None):
        made.append(Chain(replicas, shard, checkpoint_root=checkpoint_root))
        return made[-1].install(epoch) if replicas > 1 else made[-1]
    yield make
    faults.clear()
    for c in made:
        c.close()


def declare(stub):
    stub.DeclareVariables(pb.DeclareVariablesRequest(
        variables=[pb.VariableSpec(name="w", dtype="float32", shape=[4, 3])],
        tables=[pb.TableSpec(name="t", dim=4, dtype="float32", initializer="random_normal",
                             initializer_params={"stddev": 0.1, "seed": 7})]),
        timeout=TIMEOUT)
    request = pb.InitializeVariablesRequest()
    codec.encode(np.ones((4, 3), np.float32), request.values.add(name="w").tensor)
    stub.InitializeVariables(request, timeout=TIMEOUT)


def step_requests(step, rng, incarnation=1):
    """A training step's two writes: a training lookup of some keys of "t" (creating their
    rows), and the push of their gradients and of w's (dense), advancing the global step."""
    keys = np.unique(rng.integers(0, 50, size=12)).astype(np.int64)
    lookup = pb.PullRowsRequest(global_step=step)
    codec.encode(keys, lookup.keys.add(name="t", train=True).keys)
    push = pb.PushRequest(rule=ADAGRAD, increment_global_step=True, global_step=step,
                          worker=0, id=pb.PushId(incarnation=incarnation, sequence=step + 1))
    gradient = push.gradients.add(name="t", keyed=True)
    codec.encode(rng.normal(size=(keys.size, 4)).astype(np.float32), gradient.values)
    codec.encode(keys, gradient.indices)
    codec.encode(rng.normal(size=(4, 3)).astype(np.float32), push.gradients.add(name="w").values)
    return lookup, push


def train(stub, steps, seed=0):
    rng = np.random.default_rng(seed)
    for step in range(steps):
        lookup, push = step_requests(step, rng, incarnation=seed + 1)
        stub.PullRows(lookup, timeout=TIMEOUT)
        stub.Push(push, timeout=TIMEOUT)


def state(server):
    """(values, slots, tables by key, global step) a server holds."""
    contents = ShardContents()
    server.store.variables.add_to(contents)
    server.store.tables.add_to(contents)
    tables = {}
    for name, fields in contents.tables.items():
        order = np.argsort(fields["keys"])
        tables[name] = {f: np.asarray(a)[order] for f, a in fields.items()
                        if np.ndim(a) and len(a) == len(order)}
    return contents.values, contents.slots, tables, server.store.global_step


def assert_same_state(a, b):
    values_a, slots_a, tables_a, step_a = a
    values_b, slots_b, tables_b, step_b = b
    assert step_a == step_b
    assert values_a.keys() == values_b.keys() and slots_a.keys() == slots_b.keys()
    for name in values_a:
        np.testing.assert_array_equal(values_a[name], values_b[name], err_msg=name)
    for key in slots_a:
        np.testing.assert_array_equal(slots_a[key], slots_b[key], err_msg=str(key))
    assert tables_a.keys() == tables_b.keys()
    for name in tables_a:
        assert tables_a[name].keys() == tables_b[name].keys()
        for field in tables_a[name]:
            np.testing.assert_array_equal(tables_a[name][field], tables_b[name][field],
                                          err_msg=f"{name}/{field}")


def code_of(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


@pytest.mark.parametrize("replicas", [2, 3])
def test_every_replica_holds_what_a_lone_server_holds(chains, replicas):
    lone, replicated = chains(1), chains(replicas)
    for c in (lone, replicated):
        declare(c.head)
        train(c.head, 25)
    expected = state(lone.servers[0])
    assert expected[3] == 25 and len(expected[2]["t"]["keys"]) > 20
    assert any(rule == "adagrad" for _, rule, _ in expected[1])  # slots are compared too
    for server in replicated.servers:
        assert_same_state(state(server), expected)


@pytest.mark.cluster  # a concurrency or timing run
def test_concurrent_pushes_leave_every_replica_equal(chains):
    c = chains(3)
    declare(c.head)
    threads = [threading.Thread(target=train, args=(c.head, 15, seed)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    head = state(c.servers[0])
    assert head[3] == 60
    for server in c.servers[1:]:
        assert_same_state(state(server), head)


def test_a_push_is_answered_only_once_the_tail_applied_it(chains):
    c = chains(3)
    declare(c.head)
    stall = faults.install(faults.Fault("stall", "before-apply", shard=0, replica=2))
    rng = np.random.default_rng(1)
    push = pb.PushRequest(rule=ADAGRAD, gradients=[pb.Gradient(name="w")])
    codec.encode(rng.normal(size=(4, 3)).astype(np.float32), push.gradients[0].values)
    answer = c.head.Push.future(push, timeout=TIMEOUT)
    assert stall.reached.wait(TIMEOUT)
    assert not answer.done()
    changed = [not np.array_equal(s.store.variables.get("w").value, np.ones((4, 3)))
               for s in c.servers]
    assert changed == [True, True, False]  # head and middle applied it; the tail has not
    stall.release()
    answer.result(timeout=TIMEOUT)
    for server in c.servers[1:]:
        assert_same_state(state(server), state(c.servers[0]))


def test_a_stale_epoch_is_refused_naming_both_epochs(chains):
    c = chains(2, epoch=3)
    declare(c.head)
    for stale in ("2", "4"):
        code, details = code_of(lambda e=stale: c.head.Pull(
            pb.PullRequest(names=["w"]), timeout=TIMEOUT, metadata=[(chain.EPOCH_METADATA, e)]))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "epoch 3" in details and f"epoch {stale}" in details
    c.head.Pull(pb.PullRequest(names=["w"]), timeout=TIMEOUT,
                metadata=[(client.EPOCH_METADATA, "3")])
    # A forwarded write of another epoch is refused by the replica, which keeps serving.
    code, details = code_of(lambda: c.stubs[1].Forward(pb.ForwardRequest(
        epoch=2, seq=1, method="Push", request=b""), timeout=TIMEOUT))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "epoch 2" in details
    # So is an older chain, and a write sent past the head.
    code, details = code_of(lambda: c.stubs[1].InstallChain(pb.ChainConfig(
        epoch=2, replicas=[c.servers[1].address], index=0), timeout=TIMEOUT))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "epoch 3" in details
    code, details = code_of(lambda: c.stubs[1].Push(pb.PushRequest(), timeout=TIMEOUT))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "not the head" in details
    train(c.head, 3)
    assert_same_state(state(c.servers[1]), state(c.servers[0]))


def test_a_client_with_an_epoch_reaches_its_head_and_is_refused_after_a_change(chains):
    c = chains(2)
    shard = client.ShardClient(0, c.servers[0].address, timeout=TIMEOUT, token="")
    try:
        shard.set_epoch(1)
        declare(shard.stub)
        assert shard.call("Pull", pb.PullRequest(names=["w"])).global_step == 0
        c.install(2, order=[0, 1])
        with pytest.raises(client.FailedPreconditionError, match="stale epoch"):
            shard.call("Pull", pb.PullRequest(names=["w"]))
    finally:
        shard.close()


def test_a_repeated_push_is_applied_once_also_by_a_new_head(chains):
    c = chains(3)
    declare(c.head)
    rng = np.random.default_rng(2)
    lookup, push = step_requests(0, rng)
    c.head.PullRows(lookup, timeout=TIMEOUT)
    first = c.head.Push(push, timeout=TIMEOUT)
    again = c.head.Push(push, timeout=TIMEOUT)
    assert again == first
    after = state(c.servers[0])
    # The head is gone: the middle replica heads the chain at epoch 2, and the worker's
    # retry reaches it with the same push id.
    c.servers[0].stop(grace=0)
    c.stubs[1].InstallChain(pb.ChainConfig(epoch=2, replicas=[
        c.servers[1].address, c.servers[2].address], index=0), timeout=TIMEOUT)
    c.stubs[2].InstallChain(pb.ChainConfig(epoch=2, replicas=[
        c.servers[1].address, c.servers[2].address], index=1), timeout=TIMEOUT)
    retried = c.stubs[1].Push(push, timeout=TIMEOUT, metadata=[(chain.EPOCH_METADATA, "2")])
    assert retried == first and retried.global_step == 1
    for server in c.servers[1:]:
        assert_same_state(state(server), after)


def test_bad_chains_and_faults_are_refused_with_what_is_wrong(chains):
    c = chains(1)
    for (epoch, replicas, index), words in [
            ((0, ["a:1"], 0), "positive"), ((1, [], 0), "address"),
            ((1, ["a:1", "a:1"], 1), "twice"), ((1, ["a:1"], 3), "index 3"),
            ((1, ["a:1", "b:0"], 0), "'b:0'"), ((1, ["a\x00:1"], 0), "host:port"),
            ((1, ["[::1]:5", "a"], 0), "'a'")]:
        config = pb.ChainConfig(epoch=epoch, replicas=replicas, index=index)
        code, details = code_of(lambda config=config: c.head.InstallChain(config,
                                                                          timeout=TIMEOUT))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and words in details
    code, details = code_of(lambda: c.head.Forward(pb.ForwardRequest(
        epoch=0, seq=1, method="Push"), timeout=TIMEOUT))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    for text, words in [("stall:nowhere:0:0", "nowhere"), ("kill:before-apply:0", "ACTION"),
                        ("pause:before-apply:0:1", "pause"), ("stall:before-apply:a:1", "numbers")]:
        with pytest.raises(ValueError, match=words):
            faults.parse(text)
    assert [repr(f) for f in faults.parse("kill:before-ack:1:0:2,stall:before-forward:0:1")] \
        == ["kill:before-ack:1:0:2", "stall:before-forward:0:1:1"]
    assert chain.EPOCH_METADATA == client.EPOCH_METADATA


def sync_push(step, seed):
    rng = np.random.default_rng(seed)
    push = pb.PushRequest(rule=ADAGRAD, worker=0, global_step=step,
                          consistency=pb.Consistency(mode=pb.Consistency.SYNC),
                          id=pb.PushId(incarnation=1, sequence=step + 1))
    codec.encode(rng.normal(size=(4, 3)).astype(np.float32), push.gradients.add(name="w").values)
    return push


def test_a_synchronous_step_is_decided_at_the_head_and_applied_by_every_replica(chains):
    c = chains(3)
    declare(c.head)
    for step in range(3):
        reply = c.head.Push(sync_push(step, step), timeout=TIMEOUT)
        assert (reply.decision.step, list(reply.decision.workers)) == (step, [0])
        assert reply.global_step == step + 1 and not reply.dropped
    again = c.head.Push(sync_push(2, 2), timeout=TIMEOUT)  # a retry: answered, not applied
    assert (again.decision.step, again.global_step) == (2, 3)
    head = state(c.servers[0])
    assert head[3] == 3
    for server in c.servers:
        assert_same_state(state(server), head)
        assert server.store.sync.decisions == {0: (0,), 1: (0,), 2: (0,)}
    # A copy of a replica that trained synchronously carries its steps' decisions.
    end = list(c.stubs[2].CopyShard(pb.CopyShardRequest(), timeout=TIMEOUT))[-1].end
    assert {d.step: list(d.workers) for d in end.sync.decisions} == {0: [0], 1: [0], 2: [0]}
    assert end.sync.last_decision.step == 2 and end.global_step == 3


def test_a_step_is_answered_and_read_only_once_the_tail_holds_its_decision(chains):
    c = chains(2)
    declare(c.head)
    # The push is the next write, its step's decision the one after: the tail stalls before
    # acknowledging the decision.
    stall = faults.install(faults.Fault("stall", "before-forward", shard=0, replica=1,
                                        after=1))
    push = c.head.Push.future(sync_push(0, 1), timeout=TIMEOUT)
    assert stall.reached.wait(10)
    assert c.servers[1].store.global_step == 1  # the tail applied it, not acknowledged yet
    read = c.head.Pull.future(pb.PullRequest(names=["w"]), timeout=TIMEOUT)
    time.sleep(0.3)
    assert not push.done() and not read.done()
    stall.release()
    assert read.result().global_step == 1 and read.result().decision.step == 0
    assert push.result().global_step == 1


def test_a_synchronous_commit_on_another_shard_reaches_every_replica(chains):
    c = chains(2, shard=1)
    declare(c.head)
    c.head.Push(sync_push(0, 5), timeout=TIMEOUT)  # kept aside until the step's commit
    assert all(s.store.sync.applied == 0 for s in c.servers)
    commit = pb.PullRequest(names=["w"], commit=pb.StepDecision(step=0, workers=[0]))
    c.head.Pull(commit, timeout=TIMEOUT)
    c.head.Pull(commit, timeout=TIMEOUT)  # again: applied once
    assert [s.store.sync.applied for s in c.servers] == [1, 1]
    assert_same_state(state(c.servers[1]), state(c.servers[0]))
    assert not np.array_equal(state(c.servers[0])[0]["w"], np.ones((4, 3)))


def test_worker_membership_reaches_every_replica(chains):
    c = chains(3)
    c.head.RegisterWorker(pb.WorkerRequest(task_index=0), timeout=TIMEOUT)
    c.head.Heartbeat(pb.HeartbeatRequest(task_index=0, local_step=4, loss=0.5),
                     timeout=TIMEOUT)
    assert [s.store.members.rows()[0][3] for s in c.servers] == [4, 4, 4]  # local step
    assert c.head.WorkerDone(pb.WorkerRequest(task_index=0), timeout=TIMEOUT).done == 1
    assert all(s.store.all_done.is_set() for s in c.servers)


def test_a_write_the_lost_middle_replica_held_reaches_the_tail_of_the_new_chain(chains):
    c = chains(3)
    declare(c.head)
    stall = faults.install(faults.Fault("stall", "before-forward", shard=0, replica=1))
    lookup, push = step_requests(0, np.random.default_rng(3))
    # Write 3 (the lookup): the middle applies it and stalls before passing it on; write 4
    # (the push) waits behind it at the tail.
    looked_up = c.head.PullRows.future(lookup, timeout=TIMEOUT)
    assert stall.reached.wait(TIMEOUT)
    answer = c.head.Push.future(push, timeout=TIMEOUT)
    wait_for(lambda: c.servers[1].servicer.replication.applied_seq == 4, TIMEOUT,
             "the middle to apply the push")
    c.servers[1].stop(grace=0)  # the middle is gone: the head is told the writes failed
    for call in (looked_up, answer):
        assert call.exception(timeout=TIMEOUT).code() == grpc.StatusCode.UNAVAILABLE
    assert c.servers[2].store.global_step == 0 and c.servers[0].store.global_step == 1
    # The new chain (head, tail), installed from the tail up: the head passes its writes not
    # acknowledged yet on again, and the worker's retry of the push is answered once.
    addresses = [c.servers[0].address, c.servers[2].address]
    c.stubs[2].InstallChain(pb.ChainConfig(epoch=2, replicas=addresses, index=1),
                            timeout=TIMEOUT)
    c.stubs[0].InstallChain(pb.ChainConfig(epoch=2, replicas=addresses, index=0),
                            timeout=TIMEOUT)
    retried = c.head.Push(push, timeout=TIMEOUT, metadata=[(chain.EPOCH_METADATA, "2")])
    assert retried.global_step == 1
    wait_for(lambda: c.servers[0].servicer.replication.unacked() == [], TIMEOUT,
             "the head to hear that the tail applied what it passed on again")
    assert_same_state(state(c.servers[2]), state(c.servers[0]))


def test_a_chain_with_a_job_token_forwards_its_writes_with_it():
    servers = [ParameterServer(shard=1, num_workers=1, token="s3cret").start() for _ in range(2)]
    addresses = [s.address for s in servers]
    metadata = [("authorization", "Bearer s3cret")]
    try:
        for index in (1, 0):
            with grpc.insecure_channel(addresses[index]) as channel:
                pb_grpc.ParameterServerStub(channel).InstallChain(pb.ChainConfig(
                    epoch=1, replicas=addresses, index=index), timeout=TIMEOUT,
                    metadata=metadata)
        with grpc.insecure_channel(addresses[0]) as channel:
            stub = pb_grpc.ParameterServerStub(channel)
            stub.DeclareVariables(pb.DeclareVariablesRequest(variables=[
                pb.VariableSpec(name="v", dtype="float32", shape=[3])]), timeout=TIMEOUT,
                metadata=metadata)
            code, _ = code_of(lambda: stub.DeclareVariables(pb.DeclareVariablesRequest(),
                                                            timeout=TIMEOUT))
            assert code == grpc.StatusCode.UNAUTHENTICATED
        assert servers[1].store.missing(["v"]) == ["v"]  # declared on the tail too
    finally:
        for s in servers:
            s.stop(grace=0)


def test_mutated_chain_configurations_never_fail_inside_the_server(chains):
    c = chains(1)
    install = c.channels[0].unary_unary("/psflow.ParameterServer/InstallChain",
                                        request_serializer=None, response_deserializer=None)
    valid = pb.ChainConfig(epoch=1, replicas=["127.0.0.1:5", "[::1]:6"],
                           index=1).SerializeToString()
    rng = random.Random(0)
    codes = set()
    for _ in range(300):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            install(bytes(data), timeout=TIMEOUT)
            codes.add(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            codes.add(exc.code())
    assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT,
                     grpc.StatusCode.FAILED_PRECONDITION}
    assert grpc.StatusCode.INVALID_ARGUMENT in codes
    c.head.GetStats(pb.StatsRequest(), timeout=TIMEOUT)


def test_a_replica_writing_a_checkpoint_evicts_nothing_the_others_keep(chains, tmp_path):
    """Stale rows go at checkpoint time on a lone server; a replica of a chain changes only
    through its log's writes, so its checkpoint keeps them (the next push evicts them on
    every replica alike)."""
    c = chains(2, checkpoint_root=str(tmp_path))
    c.head.DeclareVariables(pb.DeclareVariablesRequest(tables=[pb.TableSpec(
        name="t", dim=2, dtype="float32", initializer="zeros", steps_to_live=2)]),
        timeout=TIMEOUT)
    lookup = pb.PullRowsRequest(global_step=1)
    codec.encode(np.arange(5, dtype=np.int64), lookup.keys.add(name="t", train=True).keys)
    c.head.PullRows(lookup, timeout=TIMEOUT)
    for server in c.servers:
        server.store.tables.note_step(10)  # rows untouched for 9 steps: stale
    c.head.SaveShard(pb.SaveShardRequest(path=str(tmp_path / "replica.npz")), timeout=TIMEOUT)
    assert [len(s.store.tables.held["t"].table) for s in c.servers] == [5, 5]
    lone = chains(1, checkpoint_root=str(tmp_path))
    lone.head.DeclareVariables(pb.DeclareVariablesRequest(tables=[pb.TableSpec(
        name="t", dim=2, dtype="float32", initializer="zeros", steps_to_live=2)]),
        timeout=TIMEOUT)
    lone.head.PullRows(lookup, timeout=TIMEOUT)
    lone.servers[0].store.tables.note_step(10)
    lone.head.SaveShard(pb.SaveShardRequest(path=str(tmp_path / "lone.npz")), timeout=TIMEOUT)
    assert len(lone.servers[0].store.tables.held["t"].table) == 0
