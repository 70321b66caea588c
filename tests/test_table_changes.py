"""An embedding table's change tracking ("rows changed since X": sequences per row, blocks,
tombstones) and its row cap (max_rows), on plain EmbeddingTable objects."""

import numpy as np
import pytest

import psflow as tf
from psflow.embedding_table import EmbeddingTable
from psflow.embedding_variable import GlobalStepEvict
from psflow.errors import InvalidArgumentError
from psflow.table_changes import BLOCK_ROWS, ChangeClock, ChangesLost, RowSequences
from psflow.train.update_rules import UpdateRule

SGD = UpdateRule("sgd", learning_rate=0.5)


def table(**kwargs):
    return EmbeddingTable("t", 2, np.float32, {"kind": "constant", "value": 1.0}, **kwargs)


def rows_of(t):
    keys, values = t.export()
    return {int(k): v.tolist() for k, v in zip(keys, values, strict=True)}


def follow(mirror, changes):
    """Applies Changes to a {key: row} mirror: removed keys first, then rows."""
    for key in changes.removed.tolist():
        mirror.pop(key, None)
    for key, row in zip(changes.keys.tolist(), changes.values, strict=True):
        mirror[key] = row.tolist()


def test_changes_since_reports_creations_updates_and_removals():
    t = table()
    t.lookup(np.array([1, 2, 3]))
    first = t.changes_since(0)
    assert sorted(first.keys.tolist()) == [1, 2, 3] and first.removed.size == 0
    seen = first.upto
    t.apply(SGD, np.array([2]), np.ones((1, 2), np.float32))
    t.remove_keys(np.array([3]))
    t.lookup(np.array([4]))
    later = t.changes_since(seen)
    assert sorted(later.keys.tolist()) == [2, 4]
    assert later.removed.tolist() == [3]
    assert np.allclose(later.values[later.keys.tolist().index(2)], [0.5, 0.5])
    assert later.upto > seen
    nothing = t.changes_since(later.upto)
    assert nothing.keys.size == 0 and nothing.removed.size == 0


def test_a_key_removed_then_created_again_is_a_row_not_a_tombstone():
    t = table()
    t.lookup(np.array([7, 8]))
    seen = t.changes_since(0).upto
    t.remove_keys(np.array([7]))
    t.lookup(np.array([7]))
    changes = t.changes_since(seen)
    assert changes.keys.tolist() == [7] and changes.removed.size == 0


def test_a_mirror_following_random_changes_equals_the_table():
    rng = np.random.default_rng(3)
    t = table(steps_to_live=3, max_rows=300)
    mirror, seen = {}, 0
    for step in range(60):
        keys = np.unique(rng.integers(0, 500, size=40))
        t.lookup(keys, global_step=step)
        t.apply(SGD, keys[:10], rng.normal(size=(10, 2)).astype(np.float32), step)
        if step % 7 == 0:
            t.evict(step)
        if step % 3 == 0:  # the follower reads every few steps, and sometimes twice
            changes = t.changes_since(seen)
            follow(mirror, changes)
            follow(mirror, changes)
            seen = changes.upto
    follow(mirror, t.changes_since(seen))
    assert t.stats["evicted"] > 0 and len(t) <= 300
    assert mirror == rows_of(t)


def test_row_sequences_skip_clean_blocks_and_survive_renumbering():
    seqs = RowSequences()
    seqs.append(3 * BLOCK_ROWS + 5, 1)
    seqs.mark(np.array([5, 2 * BLOCK_ROWS + 1]), 2)
    assert seqs.block_max.view().tolist() == [2, 1, 2, 1]
    assert seqs.changed_since(1).tolist() == [5, 2 * BLOCK_ROWS + 1]
    seqs.keep(np.arange(4, 3 * BLOCK_ROWS + 5))  # rows 0-3 removed: row 5 is now 1
    assert seqs.changed_since(1).tolist() == [1, 2 * BLOCK_ROWS - 3]
    assert seqs.block_max.view().tolist() == [2, 2, 1, 1]
    assert seqs.changed_since(2).size == 0


def test_changes_older_than_the_tombstone_log_are_lost():
    t = table(tombstone_limit=4)
    t.lookup(np.arange(10))
    seen = t.changes_since(0).upto
    for key in range(6):
        t.remove_keys(np.array([key]))
    with pytest.raises(ChangesLost, match="full copy"):
        t.changes_since(seen)
    assert sorted(t.changes_since(t.tombstones.horizon).removed.tolist()) == [2, 3, 4, 5]


def test_tables_of_a_shard_share_one_clock():
    clock = ChangeClock()
    a, b = table(clock=clock), table(clock=clock)
    a.lookup(np.array([1]))
    b.lookup(np.array([1]))
    assert a.changes_since(0).upto == b.changes_since(0).upto == clock.value == 2
    assert a.changes_since(1).keys.size == 0 and b.changes_since(1).keys.tolist() == [1]


def test_max_rows_evicts_the_least_recently_updated_first():
    t = table(max_rows=4)
    t.lookup(np.array([1, 2, 3, 4]), global_step=0)
    t.apply(SGD, np.array([1, 3]), np.ones((2, 2), np.float32), global_step=5)
    t.apply(SGD, np.array([4]), np.ones((1, 2), np.float32), global_step=6)
    seen = t.changes_since(0).upto
    t.lookup(np.array([5]), global_step=7)  # 2 is the stalest
    assert sorted(rows_of(t)) == [1, 3, 4, 5]
    t.lookup(np.array([6, 7]), global_step=8)  # 1 and 3 (step 5; 1 changed in the same call)
    assert sorted(rows_of(t)) == [4, 5, 6, 7]
    assert t.stats["evicted"] == 3
    assert sorted(t.changes_since(seen).removed.tolist()) == [1, 2, 3]


def test_max_rows_ties_go_by_the_older_change_and_keep_the_lookups_own_keys():
    t = table(max_rows=3)
    t.lookup(np.array([10]), global_step=1)
    t.lookup(np.array([20]), global_step=1)
    t.lookup(np.array([30]), global_step=1)
    rows = t.lookup(np.array([10, 40]), global_step=1)  # 10 is looked up: 20 goes
    assert sorted(rows_of(t)) == [10, 30, 40]
    assert np.allclose(rows, 1.0)
    t.lookup(np.array([1, 2, 3, 4]), global_step=2)  # a lookup larger than the cap keeps its own
    assert sorted(rows_of(t)) == [1, 2, 3, 4]


def test_max_rows_holds_on_load_and_refuses_nonsense():
    t = table(max_rows=2)
    t.load({"keys": np.array([1, 2, 3]), "values": np.zeros((3, 2), np.float32),
            "last_step": np.array([5, 1, 3])})
    assert sorted(rows_of(t)) == [1, 3]
    with pytest.raises(InvalidArgumentError, match="max_rows"):
        table(max_rows=-1)


def test_max_rows_travels_with_the_embedding_variable():
    with tf.Graph().as_default():
        ev = tf.get_embedding_variable("e", 2, max_rows=10)
        opt = tf.get_embedding_variable("f", 2, ev_option=tf.EmbeddingVariableOption(
            evict_option=GlobalStepEvict(steps_to_live=5, max_rows=7)))
        assert ev.spec()["max_rows"] == 10
        assert opt.spec()["max_rows"] == 7 and opt.spec()["steps_to_live"] == 5
        with pytest.raises(ValueError, match="max_rows"):
            tf.get_embedding_variable("g", 2, max_rows=0)
    from psflow.worker.initialization import table_spec
    assert table_spec(ev, 3).max_rows == 4


def test_a_local_session_keeps_a_capped_table_at_its_cap():
    with tf.Graph().as_default():
        ev = tf.get_embedding_variable("e", 2, max_rows=3)
        ids = tf.placeholder(tf.int64, [None])
        looked = tf.nn.embedding_lookup(ev, ids)
        train = tf.train.GradientDescentOptimizer(0.1).minimize(tf.reduce_sum(looked))
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            for start in range(0, 10, 2):
                sess.run(train, {ids: np.arange(start, start + 2)})
            keys, _ = sess.store.tables[ev].export()
            assert len(keys) <= 3 and {8, 9} <= set(keys.tolist())


def test_changes_with_state_bring_a_copy_up_to_date_slots_and_all():
    adagrad = UpdateRule("adagrad", learning_rate=0.5, initial_accumulator_value=0.1)
    rng = np.random.default_rng(5)
    source, copy = table(steps_to_live=2, filter_freq=2), table(filter_freq=2)
    seen = 0
    for step in range(12):
        keys = np.unique(rng.integers(0, 60, size=15))
        source.lookup(keys, global_step=step)
        source.apply(adagrad, keys, rng.normal(size=(keys.size, 2)).astype(np.float32), step)
        source.evict(step)
        if step % 4 == 3:  # an incremental copy every few steps
            changes = source.changes_since(seen, with_state=True)
            copy.remove_keys(changes.removed)
            copy.load(changes.state, rules={"adagrad": adagrad})
            seen = changes.upto
    changes = source.changes_since(seen, with_state=True)
    copy.remove_keys(changes.removed)
    copy.load(changes.state, rules={"adagrad": adagrad})
    mine, theirs = source.state(), copy.state()
    order_a, order_b = np.argsort(mine["keys"]), np.argsort(theirs["keys"])
    for field in ("keys", "values", "last_step", "slot/adagrad/accumulator"):
        assert np.array_equal(np.asarray(mine[field])[order_a],
                              np.asarray(theirs[field])[order_b]), field
    entries_a, entries_b = np.argsort(mine["entry_keys"]), np.argsort(theirs["entry_keys"])
    for field in ("entry_keys", "entry_freq"):  # keys seen, admitted or not, and their counts
        assert np.array_equal(np.asarray(mine[field])[entries_a],
                              np.asarray(theirs[field])[entries_b]), field
    assert (np.asarray(mine["entry_freq"]) == 1).any()  # some still waiting for admission


def test_a_full_copy_in_chunks_lets_training_go_on_and_misses_nothing():
    import threading
    lock = threading.Lock()
    t = table(steps_to_live=1)
    t.lookup(np.arange(10), global_step=0)
    copied, upto = {}, None
    for chunk in t.changes_in_chunks(lock, 0, chunk_rows=4):
        upto = chunk.upto if upto is None else upto
        follow(copied, chunk)
        with lock:  # training between chunks: rows created, updated; eviction waits
            t.lookup(np.array([100 + len(copied)]), global_step=5)
            t.apply(SGD, np.array([0]), np.ones((1, 2), np.float32), global_step=5)
            assert t.evict(5) == 0
    assert sorted(copied) == list(range(10))
    follow(copied, t.changes_since(upto))
    assert copied == rows_of(t)
    assert t.evict(5) > 0  # once the copy is done
