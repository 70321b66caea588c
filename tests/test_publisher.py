"""A shard's publisher on plain objects (a ShardStore, no gRPC): catch-ups and snapshots,
contiguous deltas, dense values only when they changed, the bound per follower."""

import numpy as np

from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb
from psflow.ps.publisher import Publisher
from psflow.ps.shard_store import ShardStore


def store_with_a_table():
    store = ShardStore()
    store.declare([("w", "float32", (2,))])
    store.initialize({"w": np.zeros(2, np.float32)})
    store.declare_tables([{"name": "t", "dim": 2, "dtype": "float32",
                           "initializer": {"kind": "ones"}}])
    return store


def train(store, keys, step=0):
    keys = np.asarray(keys, dtype=np.int64)
    store.lookup_keys([("t", keys, None, True)], step)
    rule = store.rule("sgd", {"learning_rate": 1.0})
    store.push([("t", np.ones((keys.size, 2), np.float32), keys, 0, True),
                ("w", np.ones(2, np.float32), None, 0)], rule)


def parsed(messages):
    return [pb.ParameterUpdate.FromString(m) for m in messages]


def rows(update):
    return {int(k): codec.decode(t.values)[i].tolist() for t in update.tables
            for i, k in enumerate(codec.decode(t.keys).tolist())}


def test_a_follower_gets_a_snapshot_then_contiguous_deltas():
    store = store_with_a_table()
    train(store, [1, 2])
    publisher = Publisher(store, publish_period=1, dense_period=1)
    follower, catch_up = publisher.follow()
    (snapshot,) = parsed(catch_up)
    assert snapshot.snapshot and snapshot.last and snapshot.from_seq == 0
    assert rows(snapshot) == {1: [0.0, 0.0], 2: [0.0, 0.0]}
    assert [d.name for d in snapshot.dense] == ["w"]
    train(store, [2, 3])
    (delta,) = parsed(publisher.publish())
    assert not delta.snapshot and delta.from_seq == snapshot.to_seq < delta.to_seq
    assert rows(delta) == {2: [-1.0, -1.0], 3: [0.0, 0.0]}
    assert [d.name for d in delta.dense] == ["w"]  # changed since the snapshot
    assert parsed([follower.take(0)]) == [delta] and follower.take(0) is None  # queued
    assert publisher.publish() == []  # nothing changed
    publisher._dense_due = 0
    assert publisher.publish() == []  # dense due, but w did not change
    store.tables.held["t"].table.remove_keys(np.array([1]))
    (removal,) = parsed(publisher.publish())
    assert removal.from_seq == delta.to_seq
    assert codec.decode(removal.tables[0].removed).tolist() == [1]


def test_a_follower_continues_from_its_position_or_gets_a_snapshot():
    store = store_with_a_table()
    train(store, [4])
    publisher = Publisher(store)
    first, catch_up = publisher.follow()
    (snapshot,) = parsed(catch_up)
    train(store, [5])
    publisher.publish()
    publisher.leave(first)
    train(store, [6])
    _, catch_up = publisher.follow(snapshot.to_seq, publisher.incarnation)
    (again,) = parsed(catch_up)
    assert not again.snapshot and again.from_seq == snapshot.to_seq
    assert sorted(rows(again)) == [5, 6]  # not 4, which it has
    _, catch_up = publisher.follow(snapshot.to_seq, publisher.incarnation + 1)
    assert parsed(catch_up)[0].snapshot  # another incarnation's position


def test_a_follower_that_does_not_keep_up_is_dropped_with_resync():
    store = store_with_a_table()
    publisher = Publisher(store, buffer_bytes=1000)
    follower, _ = publisher.follow()
    for step in range(5):
        train(store, np.arange(step * 50, step * 50 + 50), step)
        publisher.publish()
    assert "resync" in follower.dropped
    assert follower.take(0) is None and publisher.followers == 0
    assert publisher.stats["dropped"] == 1


def test_an_update_larger_than_a_chunk_spans_messages_with_the_same_sequences():
    store = store_with_a_table()
    train(store, np.arange(1000))
    publisher = Publisher(store, chunk_bytes=2000)
    _, catch_up = publisher.follow()
    updates = parsed(catch_up)
    assert len(updates) > 5 and [u.last for u in updates] == [False] * (len(updates) - 1) + [True]
    assert {(u.from_seq, u.to_seq, u.snapshot) for u in updates} == {(0, updates[0].to_seq, True)}
    assert sum(len(rows(u)) for u in updates) == 1000

