"""The hash-keyed embedding table's store: the key index against a dict, creation, admission,
eviction, update rules on rows, state round trips and memory per row."""

import os

import numpy as np
import pytest

from psflow.embedding_table import EmbeddingTable
from psflow.errors import InvalidArgumentError
from psflow.key_index import KeyIndex, shard_of_keys
from psflow.row_init import initial_rows, name_seed
from psflow.train.update_rules import UpdateRule

NORMAL = {"kind": "truncated_normal", "mean": 0.0, "stddev": 0.5, "seed": 7}


def test_key_index_agrees_with_a_dict_under_inserts_lookups_and_rebuilds():
    rng = np.random.default_rng(0)
    index, reference = KeyIndex(capacity=16), {}
    extremes = np.array([np.iinfo(np.int64).min, np.iinfo(np.int64).max, -1, 0, 1])
    for round_ in range(40):
        keys = np.concatenate([rng.integers(-2**62, 2**62, 300), rng.integers(-50, 50, 200),
                               extremes])
        rng.shuffle(keys)
        entries, new = index.insert(keys)
        for key, entry, is_new in zip(keys.tolist(), entries.tolist(), new.tolist(), strict=True):
            if key not in reference:
                assert is_new
                reference[key] = len(reference)
            assert reference[key] == entry
        assert index.size == len(reference)
        probe = np.concatenate([keys[:100], rng.integers(-2**62, 2**62, 100)])
        expected = [reference.get(k, -1) for k in probe.tolist()]
        assert index.find(probe).tolist() == expected
        if round_ % 10 == 9:  # an eviction: keep a random half, renumbered
            kept = [k for k in reference if rng.random() < 0.5]
            index.rebuild(np.array(kept, dtype=np.int64))
            reference = {k: i for i, k in enumerate(kept)}
            assert index.find(np.array(kept, dtype=np.int64)).tolist() == list(range(len(kept)))
    assert index.capacity * 0.7 >= index.size > index.capacity * 0.3


def test_initial_rows_depend_on_the_key_and_the_spec_only():
    keys = np.array([5, -3, 2**40, 5])
    rows = initial_rows(NORMAL, keys, 8, np.float32)
    np.testing.assert_array_equal(rows[0], rows[3])
    np.testing.assert_array_equal(initial_rows(NORMAL, keys[[1]], 8, np.float32)[0], rows[1])
    assert not np.array_equal(rows[0], rows[1])
    assert not np.array_equal(initial_rows({**NORMAL, "seed": 8}, keys, 8, np.float32), rows)
    many = initial_rows(NORMAL, np.arange(20000), 16, np.float64)
    assert np.abs(many).max() <= 1.0 + 1e-12  # truncated at two standard deviations
    assert abs(many.mean()) < 0.01 and 0.4 < many.std() < 0.5
    uniform = initial_rows({"kind": "random_uniform", "minval": -1, "maxval": 1, "seed": 1},
                           np.arange(5000), 4, np.float64)
    assert -1 <= uniform.min() and uniform.max() < 1 and abs(uniform.mean()) < 0.03
    assert name_seed("a") != name_seed("b")


def test_rows_are_created_on_first_lookup_and_reads_do_not_create():
    table = EmbeddingTable("t", 4, initializer=NORMAL)
    assert len(table) == 0
    np.testing.assert_array_equal(table.lookup([10, -7], train=False), np.zeros((2, 4)))
    assert len(table) == 0
    rows = table.lookup([10, -7, 10])
    assert len(table) == 2 and table.stats["created"] == 2
    np.testing.assert_array_equal(rows, initial_rows(NORMAL, np.array([10, -7, 10]), 4,
                                                     np.float32))
    np.testing.assert_array_equal(table.lookup([-7], train=False), rows[[1]])


def test_a_key_is_admitted_after_filter_freq_sightings():
    table = EmbeddingTable("t", 2, initializer={"kind": "ones"}, filter_freq=3)
    sgd = UpdateRule("sgd", learning_rate=1.0)
    np.testing.assert_array_equal(table.lookup([4]), [[0, 0]])
    table.apply(sgd, [4], [[1.0, 1.0]])  # no row yet: dropped
    assert table.stats["dropped_gradients"] == 1 and len(table) == 0
    np.testing.assert_array_equal(table.lookup([4, 9]), [[0, 0], [0, 0]])
    np.testing.assert_array_equal(table.lookup([4, 4]), [[1, 1], [1, 1]])  # seen 4 times
    table.apply(sgd, [4], [[0.5, 0.25]])
    np.testing.assert_array_equal(table.lookup([4], train=False), [[0.5, 0.75]])
    assert len(table) == 1 and table.stats["filtered"] == 3


@pytest.mark.parametrize("name,hyper", [
    ("sgd", {"learning_rate": 0.1}),
    ("momentum", {"learning_rate": 0.1, "momentum": 0.9}),
    ("adagrad", {"learning_rate": 0.1, "initial_accumulator_value": 0.2}),
    ("adam", {"learning_rate": 0.05}),
    ("ftrl", {"learning_rate": 0.3, "l1": 0.01, "l2": 0.1}),
])
def test_update_rules_on_table_rows_equal_them_on_a_dense_table(name, hyper):
    rng = np.random.default_rng(1)
    keys = np.array([900, -4, 17, 3, 2**50])
    table = EmbeddingTable("t", 3, initializer=NORMAL)
    rule = UpdateRule(name, **hyper)
    dense = initial_rows(NORMAL, keys, 3, np.float32)
    dense_slots = rule.init_slots(dense)
    from psflow.indexed_slices import IndexedSlices
    table.lookup(keys)
    for _ in range(4):
        touched = rng.choice(keys.size, size=3, replace=False)
        grads = rng.normal(size=(3, 3)).astype(np.float32)
        table.apply(rule, keys[touched], grads)
        rule.apply(dense, IndexedSlices(grads, touched, dense.shape), dense_slots)
    np.testing.assert_allclose(table.lookup(keys, train=False), dense, rtol=1e-6, atol=1e-7)
    new = table.lookup([555])  # a row created after the slots: fresh slots
    np.testing.assert_array_equal(new, initial_rows(NORMAL, np.array([555]), 3, np.float32))


def test_stale_rows_are_evicted_with_their_slots_and_come_back_fresh():
    table = EmbeddingTable("t", 2, initializer={"kind": "zeros"}, steps_to_live=5)
    adagrad = UpdateRule("adagrad", learning_rate=1.0, initial_accumulator_value=1.0)
    table.lookup([1, 2, 3], global_step=0)
    table.apply(adagrad, [1, 2, 3], np.ones((3, 2)), global_step=0)
    table.apply(adagrad, [2], np.ones((1, 2)), global_step=10)
    assert table.evict(global_step=12) == 2 and len(table) == 1
    assert table.stats["evicted"] == 2
    keys, values = table.export()
    assert keys.tolist() == [2]
    two = values[0].copy()
    np.testing.assert_array_equal(table.lookup([1], train=False), [[0, 0]])  # gone
    np.testing.assert_array_equal(table.lookup([2], train=False), [two])
    table.lookup([1], global_step=12)
    table.apply(adagrad, [1], np.ones((1, 2)), global_step=12)
    # a fresh accumulator (1.0 + 1): the same first step as at the start
    np.testing.assert_allclose(table.lookup([1], train=False), [[-1 / np.sqrt(2)] * 2])
    np.testing.assert_array_equal(table.lookup([2], train=False), [two])


def test_state_restores_across_another_number_of_shards():
    adam = UpdateRule("adam", learning_rate=0.1)
    one = EmbeddingTable("t", 4, initializer=NORMAL, filter_freq=2)
    keys = np.arange(-500, 500) * 7919
    one.lookup(keys)
    one.lookup(keys[:600])  # 600 admitted, 400 seen once
    one.apply(adam, keys[:600], np.ones((600, 4)), global_step=3)
    state = one.state()
    shards = shard_of_keys(state["keys"], 3)
    entry_shards = shard_of_keys(state["entry_keys"], 3)
    parts = []
    for s in range(3):
        part = EmbeddingTable("t", 4, initializer=NORMAL, filter_freq=2)
        part.load({**{k: v[shards == s] for k, v in state.items()
                      if k in ("keys", "values", "last_step", "slot/adam/m", "slot/adam/v")},
                   "slot/adam/t": state["slot/adam/t"],
                   "entry_keys": state["entry_keys"][entry_shards == s],
                   "entry_freq": state["entry_freq"][entry_shards == s]}, {"adam": adam})
        parts.append(part)
    assert sum(len(p) for p in parts) == 600
    for s, part in enumerate(parts):
        mine = keys[shard_of_keys(keys, 3) == s]
        np.testing.assert_array_equal(part.lookup(mine, train=False),
                                      one.lookup(mine, train=False))
    # the same next step everywhere, slots included; a once-seen key is admitted on its 2nd
    one.apply(adam, keys[:600], np.ones((600, 4)))
    late = keys[700]
    for s, part in enumerate(parts):
        mine = keys[:600][shard_of_keys(keys[:600], 3) == s]
        part.apply(adam, mine, np.ones((mine.size, 4)))
        np.testing.assert_allclose(part.lookup(mine, train=False),
                                   one.lookup(mine, train=False), rtol=1e-6)
    owner = parts[shard_of_keys(np.array([late]), 3)[0]]
    before = len(owner)
    owner.lookup([late])  # its count came along: this second sighting admits it
    assert len(owner) == before + 1


def test_a_row_costs_little_more_than_its_key_values_and_slots():
    table = EmbeddingTable("t", 16, initializer={"kind": "zeros"})
    keys = np.random.default_rng(3).integers(-2**63, 2**63 - 1, 200_000)
    table.lookup(keys)
    table.apply(UpdateRule("adagrad", learning_rate=0.1), keys[:10], np.ones((10, 16)))
    ideal = 8 + 16 * 4 * 2  # key, values, accumulator
    assert table.nbytes() / len(table) < 1.5 * ideal


def test_bad_keys_and_gradients_are_named():
    table = EmbeddingTable("user_emb", 4)
    with pytest.raises(InvalidArgumentError, match="user_emb.*float64"):
        table.lookup(np.array([1.5]))
    with pytest.raises(InvalidArgumentError, match=r"user_emb.*\(2, 3\).*\(2, 4\)"):
        table.apply(UpdateRule("sgd", learning_rate=1.0), [1, 2], np.ones((2, 3)))
    with pytest.raises(InvalidArgumentError, match="dimension 4.*"):
        table.load({"keys": np.array([1]), "values": np.ones((1, 5))})


def test_loading_the_same_rows_again_is_harmless():
    adagrad = UpdateRule("adagrad", learning_rate=0.5)
    table = EmbeddingTable("t", 2, initializer=NORMAL)
    table.lookup([3, 4, 5])
    table.apply(adagrad, [3, 4], np.ones((2, 2)))
    state = {k: np.array(v, copy=True) for k, v in table.state().items()}
    other = EmbeddingTable("t", 2, initializer=NORMAL)
    other.load(state)
    other.load(state)  # a restore sent twice (a chief restarted mid-restore)
    assert len(other) == 3
    keys = np.array([3, 4, 5])
    other.apply(adagrad, [3], np.ones((1, 2)))  # the pending slots come with the rule
    table.apply(adagrad, [3], np.ones((1, 2)))
    np.testing.assert_array_equal(other.lookup(keys, train=False),
                                  table.lookup(keys, train=False))
    with pytest.raises(InvalidArgumentError, match="keys \\(each once\\)"):
        other.load({"keys": np.array([7, 7]), "values": np.ones((2, 2))})
    assert len(other) == 3  # nothing of a refused load was kept


def test_a_chunked_copy_equals_the_state_and_updates_may_come_between_chunks():
    import threading
    adam = UpdateRule("adam", learning_rate=0.1)
    table = EmbeddingTable("t", 3, initializer=NORMAL, steps_to_live=1)
    keys = np.arange(1000) * 31 - 400
    table.lookup(keys)
    table.apply(adam, keys, np.ones((1000, 3)))
    lock = threading.Lock()
    expected = {k: np.array(v, copy=True) for k, v in table.state().items()}
    copied, longest = table.copy_state(lock, chunk_rows=64)
    assert sorted(copied) == sorted(expected)
    for name, array in expected.items():
        np.testing.assert_array_equal(copied[name], array, err_msg=name)
    assert longest < 1.0
    # meanwhile rows keep their places: eviction waits for a copy under way
    table._copying = 1
    assert table.evict(global_step=100) == 0
    table._copying = 0
    assert table.evict(global_step=100) == 1000


def test_large_arrays_have_pages_of_their_own_written_pages_only_resident():
    from psflow.key_index import MAP_BYTES, Growable, mapped_zeros

    def resident():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    before = resident()
    big = mapped_zeros((16 << 20,), np.float32)  # 64 MiB, never touched
    assert resident() - before < 8 << 20
    big[:1000] = 1.0
    assert big.flags.writeable and big.sum() == 1000 and not big[1000:].any()
    small = mapped_zeros((3, 4), np.int32)
    assert small.shape == (3, 4) and small.nbytes < MAP_BYTES and not small.any()
    grown = Growable((2,), np.int64)
    for start in range(0, 300_000, 50_000):  # grows past MAP_BYTES onto its own pages
        grown.append(np.arange(start, start + 50_000, dtype=np.int64)[:, None] * [1, -1])
    assert grown.array.nbytes >= MAP_BYTES
    assert np.array_equal(grown.view()[:, 0], np.arange(300_000))
    assert np.array_equal(grown.view()[:, 1], -np.arange(300_000))
