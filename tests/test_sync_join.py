"""A replica joining a shard's chain while two workers train synchronously or with bounded
staleness (in this process, gRPC on loopback): the copy carries the pushes waiting for their
step and the steps' bookkeeping, so once the chain's first head is stopped the workers go on
through the old tail and the newcomer, and end with the same values, slots and global step as
through lone shards."""

import types

import numpy as np
import pytest

from psflow.ps.join import Joiner
from psflow.ps.shard_copy import CopyApplier, copy_pieces
from psflow.ps.shard_server import ParameterServer
from psflow.ps.shard_store import ShardStore
from psflow.train.consistency import Consistency
from test_join import _apply, _Writes
from test_replication import assert_same_state, state
from test_sync_chain import (  # noqa: F401 -- the fixtures
    STEPS,
    WORKERS,
    assert_same_results,
    heads,
    no_faults,
    servers,
    ssp,
    sync_adagrad,
    train,
)
from waiting import wait_for


@pytest.fixture
def start(servers):  # noqa: F811 -- test_sync_chain's fixture: chains, maybe under a master
    return servers


@pytest.fixture
def newcomers():
    started = []
    yield started
    for server in started:
        server.stop(grace=0)


def join_then_stop_head(chains, master, shard, newcomers, pending=True):
    """on_step for train(): worker 0 joins a new replica to `shard`'s chain before its third
    step (once the tail holds a push waiting for its step, with `pending`), and stops the
    chain's first head before its fifth."""

    def on_step(index, k):
        if index != 0:
            return
        if k == 2:
            tail = chains[shard][1]
            if pending:
                wait_for(lambda: tail.store.sync.in_use() and tail.store.sync.pending, 10,
                         "a push waiting at the tail")
            server = ParameterServer(shard=shard, num_workers=WORKERS, heartbeat_s=0.05).start()
            newcomers.append(server)
            server.heartbeat_to(master.address)
            assert Joiner(server, master.address, server.address).run() == "joined"
            assert master.chain(shard)[1] == [r.address for r in chains[shard]] + \
                [server.address]
        elif k == 4:
            chains[shard][0].stop(grace=0)
    return on_step


@pytest.mark.cluster  # a concurrency or timing run
@pytest.mark.parametrize("shard", [0, 1])
def test_sync_through_a_chain_a_replica_joined_equals_lone_shards(start, newcomers, shard):
    lone, _ = start(2, 1)
    chains, master = start(2, 2, master=True)
    expected = train(heads(lone), sync_adagrad)
    got = train(heads(chains), sync_adagrad, master.address,
                join_then_stop_head(chains, master, shard, newcomers))
    new, survivor = newcomers[0], chains[shard][1]
    assert master.chain(shard)[1] == [survivor.address, new.address]
    assert_same_results(got, expected)
    assert got[0][-1] == STEPS
    for chain, alone in zip(chains, lone, strict=True):
        for server in (r for r in chain if not r.stopped):
            assert_same_state(state(server), state(alone[0]))
    assert_same_state(state(new), state(lone[shard][0]))
    if shard == 0:
        assert new.store.sync.decisions == survivor.store.sync.decisions
        assert set(new.store.sync.decisions) == set(range(STEPS))
    else:
        assert new.store.sync.applied == survivor.store.sync.applied == STEPS
    assert new.store.stats()["dropped"] == 0


@pytest.mark.cluster  # a concurrency or timing run
def test_ssp_through_a_chain_a_replica_joined_counts_every_push_once(start, newcomers):
    chains, master = start(2, 2, master=True)
    results = train(heads(chains), ssp, master.address,
                    join_then_stop_head(chains, master, 0, newcomers, pending=False))
    new, survivor = newcomers[0], chains[0][1]
    assert master.chain(0)[1] == [survivor.address, new.address]
    assert max(r[-1] for r in results.values()) == WORKERS * STEPS
    for server in (survivor, new):
        assert server.store.global_step == WORKERS * STEPS
        assert server.store.sync.clocks == {w: STEPS for w in range(WORKERS)}
    assert_same_state(state(new), state(survivor))
    assert_same_state(state(chains[1][1]), state(chains[1][0]))


def test_a_copy_carries_the_pending_pushes_and_the_steps_bookkeeping():
    source = ShardStore(shard=0, num_workers=3)
    source.declare([("w", "float32", (3,)), ("v", "float64", (4, 2))])
    source.declare_tables([{"name": "t", "dim": 2, "dtype": "float32",
                            "initializer": {"kind": "zeros"}}])
    source.initialize({"w": np.arange(3, dtype=np.float32), "v": np.ones((4, 2))})
    sync = Consistency("sync", replicas_to_aggregate=2, staleness=0)
    for worker in range(3):
        source.register(worker)
    rule = source.rule("adagrad", {"learning_rate": 0.5})
    grads = [("w", np.full(3, 0.5, np.float64), None, 0),  # cast to float32 when checked
             ("v", np.ones((1, 2)), np.array([2]), 0),
             ("t", np.ones((2, 2), np.float32), np.array([7, 9]), 0, True)]
    for worker in (0, 1):
        source.push_step(grads, rule, sync, worker=worker, global_step=0, wait=False)
    source.sync.apply_decision(0, (0, 1))
    source.push_step(grads, rule, sync, worker=2, global_step=0, wait=False,
                     push_id=(1, 1, 0))  # too late: dropped
    source.push_step(grads, rule, sync, worker=1, global_step=1, wait=False)  # pending
    source.sync.ssp_count(2)
    target = ShardStore(shard=0, num_workers=3)
    _apply(CopyApplier(target, _Writes(target).apply), copy_pieces(source))
    assert target.global_step == 1
    assert [(key, result.dropped) for key, result in target.push_answers()] == \
        [((2, (1, 1, 0)), True)]
    assert target.sync.snapshot()["decisions"] == {0: (0, 1)}
    for key in ("arrivals", "last_decision", "applied", "dropped", "steps", "clocks"):
        assert target.sync.snapshot()[key] == source.sync.snapshot()[key], key
    (checked, copied_rule), = target.sync.pending[1].values()
    assert list(target.sync.pending[1]) == [1] and copied_rule.hyper == rule.hyper
    assert [held.name for held, _, _ in checked] == ["w", "v", "t"]
    # Both decide step 1 from the same gradients: the same values.
    for store in (source, target):
        store.push_step(grads, rule, sync, worker=0, global_step=1, wait=False)
        store.sync.apply_decision(1, (1, 0))
    for name in ("w", "v"):
        np.testing.assert_array_equal(target.variables.held[name].value,
                                      source.variables.held[name].value)
    assert_same_state(state_of(target), state_of(source))


def state_of(store):
    return state(types.SimpleNamespace(store=store))
