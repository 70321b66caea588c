"""The parameter-server store as a plain object: declarations, initialization, waiting,
pulls, pushes with the optimizers' update rules, locking, counters and membership."""

import math
import threading
import time

import numpy as np
import pytest

from psflow.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from psflow.indexed_slices import IndexedSlices
from psflow.proto import psflow_pb2 as pb
from psflow.proto import wire
from psflow.ps.shard_store import ShardStore
from psflow.ps.stats import STALENESS_BUCKETS
from psflow.train.update_rules import UpdateRule
from waiting import wait_for


def _store(**variables):
    """A store with float32 variables {name: shape} declared (not initialized)."""
    store = ShardStore(shard=0, num_workers=2)
    store.declare([(name, "float32", shape) for name, shape in variables.items()])
    return store


def _read(store, name):
    """(a copy of the value, its version)."""
    return store.with_values([name], lambda values: (values[0][2].copy(), values[0][1]))


def _value(store, name):
    return _read(store, name)[0]


def _sgd(store, lr=0.1):
    return store.rule("sgd", {"learning_rate": lr})


# -- declare ---------------------------------------------------------------------------------
def test_declare_is_idempotent_and_reports_initialized():
    store = ShardStore()
    assert store.declare([("w", "float32", (2, 3)), ("b", "float64", ())]) == []
    assert store.declare([("w", "float32", [2, 3])]) == []
    store.initialize({"w": np.zeros((2, 3), np.float32)})
    assert store.declare([("w", "float32", (2, 3)), ("b", "float64", ())]) == ["w"]
    assert store.stats()["variables"] == 2


@pytest.mark.parametrize("dtype, shape", [("float32", (3, 2)), ("float64", (2, 3)),
                                          ("float32", (6,))])
def test_conflicting_declaration_names_both(dtype, shape):
    store = _store(w=(2, 3))
    with pytest.raises(InvalidArgumentError) as info:
        store.declare([("w", dtype, shape)])
    text = str(info.value)
    assert "'w'" in text and "float32 (2, 3)" in text
    assert f"{dtype} ({', '.join(map(str, shape))}{',' if len(shape) == 1 else ''})" in text


def test_conflicting_declaration_declares_nothing_of_the_call():
    store = _store(w=(2,))
    with pytest.raises(InvalidArgumentError):
        store.declare([("new", "float32", (1,)), ("w", "float32", (3,))])
    with pytest.raises(NotFoundError):
        store.missing(["new"])


def test_conflict_within_one_call():
    with pytest.raises(InvalidArgumentError, match="'v'"):
        ShardStore().declare([("v", "float32", (1,)), ("v", "float32", (2,))])


@pytest.mark.parametrize("spec, text", [(("", "float32", (1,)), "name"),
                                        (("x", "float32", (-1,)), "negative"),
                                        (("x", "nonsense", (1,)), "dtype")])
def test_bad_declarations(spec, text):
    with pytest.raises(InvalidArgumentError, match=text):
        ShardStore().declare([spec])


# -- initialize and wait ---------------------------------------------------------------------
def test_initialize_keeps_existing_values_unless_overwrite():
    store = _store(w=(2,), b=(2,))
    assert store.initialize({"w": np.array([1, 2], np.float32)}) == ["w"]
    assert store.initialize({"w": np.array([9, 9], np.float32),
                             "b": np.array([3, 4], np.float32)}) == ["b"]
    np.testing.assert_array_equal(_value(store, "w"), [1, 2])
    assert store.initialize({"w": np.array([5, 6], np.float32)}, overwrite=True) == ["w"]
    np.testing.assert_array_equal(_value(store, "w"), [5, 6])
    np.testing.assert_array_equal(_value(store, "b"), [3, 4])


def test_initialize_copies_a_read_only_value_and_casts_float_width():
    store = _store(w=(3,))
    source = np.frombuffer(np.array([1, 2, 3], np.float64).tobytes(), np.float64)
    assert not source.flags.writeable
    store.initialize({"w": source})
    value, version = _read(store, "w")
    assert value.dtype == np.float32 and version == 0
    np.testing.assert_array_equal(value, [1, 2, 3])
    store.push([("w", np.ones(3, np.float32), None, 0)], _sgd(store))  # writable in place
    np.testing.assert_allclose(_value(store, "w"), [0.9, 1.9, 2.9], rtol=1e-6)


def test_initialize_checks_everything_first():
    store = _store(w=(2,), b=(2,))
    with pytest.raises(InvalidArgumentError) as info:
        store.initialize({"w": np.zeros(2, np.float32), "b": np.zeros(3, np.float32)})
    assert "'b'" in str(info.value) and "(3,)" in str(info.value) and "(2,)" in str(info.value)
    assert store.missing(["w", "b"]) == ["w", "b"]


def test_initialize_wrong_dtype_names_both():
    store = ShardStore()
    store.declare([("n", "int64", (2,))])
    with pytest.raises(InvalidArgumentError) as info:
        store.initialize({"n": np.zeros(2, np.float32)})
    assert "float32" in str(info.value) and "int64" in str(info.value)


def test_initialize_unknown_is_not_found():
    with pytest.raises(NotFoundError, match="'nope'"):
        ShardStore().initialize({"nope": np.zeros(1)})


def test_wait_initialized_wakes_on_initialize_from_another_thread():
    store = _store(w=(2,), b=(1,))
    result = {}

    def wait():
        started = time.monotonic()
        result["missing"] = store.wait_initialized(["w", "b"], timeout=10)
        result["waited"] = time.monotonic() - started

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.1)
    store.initialize({"w": np.zeros(2, np.float32)})
    time.sleep(0.1)
    assert waiter.is_alive()  # b is still missing
    store.initialize({"b": np.zeros(1, np.float32)})
    waiter.join(5)
    assert not waiter.is_alive()
    assert result["missing"] == []
    assert 0.15 <= result["waited"] < 2


def test_wait_initialized_times_out_with_the_missing_names():
    store = _store(w=(2,), b=(1,))
    store.initialize({"b": np.zeros(1, np.float32)})
    started = time.monotonic()
    assert store.wait_initialized(["w", "b"], timeout=0.2) == ["w"]
    assert 0.15 <= time.monotonic() - started < 1.5
    assert store.wait_initialized(["b"], timeout=0) == []


def test_wait_initialized_unknown_is_not_found():
    with pytest.raises(NotFoundError, match="'ghost'"):
        _store(w=(1,)).wait_initialized(["w", "ghost"], timeout=1)


def test_close_ends_waits():
    store = _store(w=(1,))
    result = []
    waiter = threading.Thread(target=lambda: result.append(store.wait_initialized(["w"], 60)))
    waiter.start()
    time.sleep(0.05)
    store.close()
    waiter.join(2)
    assert result == [["w"]]


def test_wait_ends_when_its_caller_is_gone():
    store = _store(w=(1,))
    active = [True]
    result = []
    waiter = threading.Thread(target=lambda: result.append(
        store.wait_initialized(["w"], 60, is_active=lambda: active[0])))
    waiter.start()
    time.sleep(0.05)
    active[0] = False
    store.wake_waiters()
    waiter.join(2)
    assert result == [["w"]]


# -- pull ------------------------------------------------------------------------------------
def pull(store, names):
    """[(name, bytes, dtype, shape, version)] from the reply bytes the shard builds."""
    reply = wire.pull_reply(store.with_values(
        names, lambda values: wire.pull_response(pb.PullResponse(), values)))
    return [(v.name, v.array.tobytes(), v.array.dtype, v.array.shape, v.version)
            for v in reply.values]


def test_pull_returns_bytes_dtype_shape_version():
    store = _store(w=(2, 2))
    value = np.arange(4, dtype=np.float32).reshape(2, 2)
    store.initialize({"w": value})
    [(name, data, dtype, shape, version)] = pull(store, ["w"])
    assert (name, dtype, shape, version) == ("w", np.float32, (2, 2), 0)
    np.testing.assert_array_equal(np.frombuffer(data, dtype).reshape(shape), value)
    assert store.stats()["bytes_sent"] == 16


def test_pull_before_initialize_and_unknown():
    store = _store(w=(2,))
    with pytest.raises(FailedPreconditionError, match="'w'"):
        pull(store, ["w"])
    with pytest.raises(NotFoundError, match="'x'"):
        pull(store, ["x"])


def test_pull_is_a_consistent_snapshot_during_pushes():
    """Every pulled value is one that existed: all elements equal (a push moves all)."""
    store = _store(w=(200_000,))
    store.initialize({"w": np.zeros(200_000, np.float32)})
    rule = _sgd(store, lr=1.0)
    grad = np.full(200_000, -1.0, np.float32)
    stop = threading.Event()

    def push():
        while not stop.is_set():
            store.push([("w", grad, None, 0)], rule)

    pusher = threading.Thread(target=push)
    pusher.start()
    try:
        wait_for(lambda: _read(store, "w")[1] > 0, 10, "the first push")
        for _ in range(50):
            [(_, data, _, _, version)] = pull(store, ["w"])
            pulled = np.frombuffer(data, np.float32)
            assert pulled[0] == pulled[-1] == pulled.min() == pulled.max()
    finally:
        stop.set()
        pusher.join()
    assert version > 0


# -- push ------------------------------------------------------------------------------------
def test_push_before_initialize_is_failed_precondition():
    store = _store(w=(2,))
    with pytest.raises(FailedPreconditionError, match="'w'"):
        store.push([("w", np.ones(2, np.float32), None, 0)], _sgd(store))


def test_push_unknown_is_not_found():
    store = _store(w=(2,))
    store.initialize({"w": np.zeros(2, np.float32)})
    with pytest.raises(NotFoundError, match="'v'"):
        store.push([("w", np.ones(2, np.float32), None, 0),
                    ("v", np.ones(2, np.float32), None, 0)], _sgd(store))
    # Nothing of the failed push was applied.
    np.testing.assert_array_equal(_value(store, "w"), [0, 0])
    assert _read(store, "w")[1] == 0


def test_push_wrong_shape_names_both_shapes():
    store = _store(w=(3, 4))
    store.initialize({"w": np.zeros((3, 4), np.float32)})
    with pytest.raises(InvalidArgumentError) as info:
        store.push([("w", np.ones((4, 3), np.float32), None, 0)], _sgd(store))
    text = str(info.value)
    assert "'w'" in text and "(4, 3)" in text and "(3, 4)" in text


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, np.uint8])
def test_push_non_float_gradient_names_both_dtypes(dtype):
    store = _store(w=(3,))
    store.initialize({"w": np.zeros(3, np.float32)})
    with pytest.raises(InvalidArgumentError) as info:
        store.push([("w", np.ones(3, dtype), None, 0)], _sgd(store))
    text = str(info.value)
    assert "'w'" in text and np.dtype(dtype).name in text and "float32" in text


def test_push_other_float_width_is_cast_to_the_variable():
    store = _store(w=(3,))
    store.initialize({"w": np.ones(3, np.float32)})
    store.push([("w", np.array([1, 2, 3], np.float64), None, 0)], _sgd(store, 0.5))
    store.push([("w", np.array([1, 1, 1], np.float16), None, 0)], _sgd(store, 0.5))
    value = _value(store, "w")
    assert value.dtype == np.float32
    np.testing.assert_array_equal(value, np.float32([0, -0.5, -1]))


def test_push_to_integer_variable_is_refused():
    store = ShardStore()
    store.declare([("count", "int64", ())])
    store.initialize({"count": np.int64(3)})
    with pytest.raises(InvalidArgumentError, match="'count'.*int64"):
        store.push([("count", np.int64(1), None, 0)], _sgd(store))


@pytest.mark.parametrize("name, hyper, text", [
    ("nesterov", {"learning_rate": 0.1}, "unknown update rule"),
    ("sgd", {}, "learning_rate"),
    ("adam", {"learning_rate": 0.1, "bogus": 1.0}, "bogus"),
])
def test_bad_rule_is_invalid_argument(name, hyper, text):
    with pytest.raises(InvalidArgumentError, match=text):
        ShardStore().rule(name, hyper)


def test_rules_are_cached_per_spec():
    store = ShardStore()
    rule = store.rule("adam", {"learning_rate": 0.1, "beta1": 0.8})
    assert store.rule("adam", {"beta1": 0.8, "learning_rate": 0.1}) is rule
    assert store.rule("adam", {"learning_rate": 0.2, "beta1": 0.8}) is not rule
    for k in range(200):  # a decaying learning rate: the cache stays bounded
        store.rule("sgd", {"learning_rate": 1.0 / (k + 1)})
    assert len(store._rules) <= 64


@pytest.mark.parametrize("name, hyper", [
    ("sgd", {"learning_rate": 0.1}),
    ("momentum", {"learning_rate": 0.05, "momentum": 0.9}),
    ("momentum", {"learning_rate": 0.05, "momentum": 0.9, "use_nesterov": 1.0}),
    ("adagrad", {"learning_rate": 0.1, "initial_accumulator_value": 0.1}),
    ("adam", {"learning_rate": 0.01, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8}),
])
def test_push_equals_the_rule_applied_locally(name, hyper):
    rng = np.random.default_rng(1)
    initial = rng.standard_normal((5, 3)).astype(np.float32)
    grads = [rng.standard_normal((5, 3)).astype(np.float32) for _ in range(4)]
    store = _store(w=(5, 3))
    store.initialize({"w": initial})
    local_rule = UpdateRule(name, **hyper)
    local = initial.copy()
    slots = local_rule.init_slots(local)
    for k, grad in enumerate(grads):
        staleness, _ = store.push([("w", grad, None, k)], store.rule(name, hyper))
        assert staleness == [0]
        local_rule.apply(local, grad, slots)
    value, version = _read(store, "w")
    assert version == len(grads)
    np.testing.assert_array_equal(value, local)  # the same arithmetic, bit for bit


def test_sparse_push_updates_only_its_rows_and_repeats_add_up():
    store = _store(emb=(6, 2))
    initial = np.arange(12, dtype=np.float32).reshape(6, 2)
    store.initialize({"emb": initial})
    values = np.array([[1, 1], [2, 2], [4, 4]], np.float32)
    indices = np.array([1, 4, 1], np.int64)
    store.push([("emb", values, indices, 0)], _sgd(store, 0.5))
    expected = initial.copy()
    expected[1] -= 0.5 * 5
    expected[4] -= 0.5 * 2
    np.testing.assert_array_equal(_value(store, "emb"), expected)
    # The same as the rule applied locally to IndexedSlices.
    local = initial.copy()
    UpdateRule("sgd", learning_rate=0.5).apply(local, IndexedSlices(values, indices, (6, 2)), {})
    np.testing.assert_array_equal(local, expected)


def test_sparse_push_with_adam_equals_local():
    store = _store(emb=(4, 3))
    initial = np.ones((4, 3), np.float32)
    store.initialize({"emb": initial})
    hyper = {"learning_rate": 0.1}
    values = np.full((2, 3), 0.5, np.float32)
    indices = np.array([0, 3], np.int64)
    store.push([("emb", values, indices, 0)], store.rule("adam", hyper))
    local = initial.copy()
    rule = UpdateRule("adam", **hyper)
    rule.apply(local, IndexedSlices(values, indices, (4, 3)), rule.init_slots(local))
    np.testing.assert_array_equal(_value(store, "emb"), local)


@pytest.mark.parametrize("values_shape, indices, text", [
    ((2, 3), [0, 1], "(2, 3)"),          # rows of the wrong width
    ((3, 2), [0, 1], "(2, 2)"),          # more rows than indices
    ((2, 2), [0, 6], "row index 6"),     # out of range
    ((2, 2), [-1, 0], "row index -1"),
])
def test_sparse_push_bad_shapes_and_indices(values_shape, indices, text):
    store = _store(emb=(6, 2))
    store.initialize({"emb": np.zeros((6, 2), np.float32)})
    with pytest.raises(InvalidArgumentError) as info:
        store.push([("emb", np.ones(values_shape, np.float32),
                     np.array(indices, np.int64), 0)], _sgd(store))
    assert "'emb'" in str(info.value) and text in str(info.value)
    assert _read(store, "emb")[1] == 0


def test_sparse_push_bad_index_dtype_and_scalar_variable():
    store = _store(emb=(6, 2), s=())
    store.initialize({"emb": np.zeros((6, 2), np.float32), "s": np.float32(0)})
    with pytest.raises(InvalidArgumentError, match="indices"):
        store.push([("emb", np.ones((1, 2), np.float32), np.array([1.0]), 0)], _sgd(store))
    with pytest.raises(InvalidArgumentError, match="scalar"):
        store.push([("s", np.ones(1, np.float32), np.array([0], np.int64), 0)], _sgd(store))


def test_no_lost_updates_with_8_threads():
    threads, pushes = 8, 200
    store = _store(w=(100_000,), b=())
    store.initialize({"w": np.zeros(100_000, np.float32), "b": np.float32(0)})
    rule = _sgd(store, lr=1.0)
    grad_w = np.full(100_000, -1.0, np.float32)
    grad_b = np.float32(-0.5)
    barrier = threading.Barrier(threads)
    errors = []

    def worker(index):
        try:
            barrier.wait()
            for _ in range(pushes):
                store.push([("w", grad_w, None, 0), ("b", np.asarray(grad_b), None, 0)], rule,
                           worker=index % 2, increment_global_step=True)
        except Exception as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)

    running = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in running:
        t.start()
    for t in running:
        t.join()
    assert not errors
    total = threads * pushes
    value, version = _read(store, "w")
    np.testing.assert_array_equal(value, np.full(100_000, total, np.float32))
    assert float(_value(store, "b")) == total * 0.5
    assert version == total and _read(store, "b")[1] == total
    stats = store.stats()
    assert stats["global_step"] == total
    assert stats["pushes"] == total
    assert sum(stats["staleness_histogram"]) == 2 * total
    assert sum(w[6] for w in stats["workers"]) == total


def test_versions_and_staleness_histogram():
    store = _store(w=(2,))
    store.initialize({"w": np.zeros(2, np.float32)})
    rule = _sgd(store)
    grad = np.ones(2, np.float32)
    assert store.push([("w", grad, None, 0)], rule) == ([0], 0)       # version 0 -> 1
    assert store.push([("w", grad, None, 0)], rule) == ([1], 0)       # 1 version late
    assert store.push([("w", grad, None, 2)], rule) == ([0], 0)
    assert store.push([("w", grad, None, 7)], rule) == ([0], 0)       # from the future: 0
    for _ in range(40):
        store.push([("w", grad, None, 0)], rule)                       # 4 .. 43 late
    assert _read(store, "w")[1] == 44
    histogram = store.stats()["staleness_histogram"]
    assert len(histogram) == STALENESS_BUCKETS
    assert histogram[0] == 3 and histogram[1] == 1
    assert histogram[4:31] == [1] * 27
    assert histogram[31] == 44 - 31  # 31 .. 43 in the open-ended last bucket
    assert sum(histogram) == 44


def test_global_step_increments_and_step_staleness():
    store = _store(w=(1,))
    store.initialize({"w": np.zeros(1, np.float32)})
    rule = _sgd(store)
    grad = np.ones(1, np.float32)
    assert store.push([("w", grad, None, 0)], rule, increment_global_step=True,
                      global_step=0) == ([0], 1)
    assert store.push([("w", grad, None, 1)], rule) == ([0], 1)
    assert store.push([], rule, increment_global_step=True) == ([], 2)
    # The worker pulled at step 0; two steps have passed since: recorded as 2 late.
    assert store.push([("w", grad, None, 0)], rule, increment_global_step=True,
                      global_step=0) == ([2], 3)
    assert store.global_step == 3
    histogram = store.stats()["staleness_histogram"]
    assert histogram[0] == 2 and histogram[2] == 1 and sum(histogram) == 3


def test_global_step_only_reported_by_shard_0():
    assert ShardStore(shard=0).stats()["global_step"] == 0
    assert ShardStore(shard=1).stats()["global_step"] == -1
    assert ShardStore(shard=0).holds_global_step and not ShardStore(shard=3).holds_global_step


def test_counters_count_bytes():
    before = time.monotonic()
    store = _store(w=(4,), e=(3, 4))
    store.initialize({"w": np.zeros(4, np.float32)})
    store.initialize({"e": np.zeros((3, 4), np.float32)})
    store.push([("w", np.ones(4, np.float32), None, 0)], _sgd(store))
    sparse = (np.ones((1, 4), np.float32), np.array([0], np.int64))  # 16 + 8 bytes
    store.push([("e", *sparse, 0)], _sgd(store))
    assert len(pull(store, ["w", "w"])) == 1  # a name asked for twice is answered once
    stats = store.stats()
    after = time.monotonic()
    assert stats["bytes_received"] == 16 + 48 + 16 + 24
    assert stats["bytes_sent"] == 16
    assert stats["pushes"] == 2
    assert 0 < stats["uptime_s"] <= after - before  # since the store was made


# -- membership ------------------------------------------------------------------------------
def test_membership_and_done_counting():
    store = ShardStore(shard=1, num_workers=3)
    assert store.register(0) == (3, 0)
    assert store.register(2) == (3, 0)
    assert store.heartbeat(0, local_step=17, loss=0.25) == (3, 0)
    assert store.done(0) == (3, 1)
    assert store.done(0) == (3, 1)  # idempotent
    assert not store.all_done.is_set()
    assert store.done(2) == (3, 2)
    workers = {w[0]: w for w in store.stats()["workers"]}
    assert workers[0][1:4] == (True, True, 17) and workers[0][4] == 0.25
    assert 0 <= workers[0][5] < 5
    assert math.isnan(workers[2][4])
    assert 1 not in workers
    assert store.done(1) == (3, 3)  # done without registering still counts
    assert store.all_done.is_set()


@pytest.mark.parametrize("index", [-1, 3, 100])
def test_membership_out_of_range_is_invalid(index):
    store = ShardStore(num_workers=3)
    for call in (store.register, store.done, lambda i: store.heartbeat(i, 0, 0.0)):
        with pytest.raises(InvalidArgumentError, match=f"worker {index}"):
            call(index)
    assert not store.all_done.is_set()


def test_store_needs_a_worker():
    with pytest.raises(ValueError):
        ShardStore(num_workers=0)


def test_shared_values_are_built_once_per_version_and_never_stale():
    store = _store(w=(2, 2))
    store.initialize({"w": np.ones((2, 2), np.float32)})
    built = []

    def build(values):
        built.append(values[0][1])
        return values[0][2].tobytes()

    first = store.with_values(["w"], build, share=True)
    assert store.with_values(["w"], build, share=True) is first  # same version: kept
    assert built == [0]
    store.push([("w", np.ones((2, 2), np.float32), None, 0)], _sgd(store, lr=1.0))
    after_push = store.with_values(["w"], build, share=True)
    assert np.frombuffer(after_push, np.float32).tolist() == [0.0] * 4 and built == [0, 1]
    # An overwrite keeps the version but is a new value: built again.
    store.initialize({"w": np.full((2, 2), 7, np.float32)}, overwrite=True)
    again = store.with_values(["w"], build, share=True)
    assert np.frombuffer(again, np.float32).tolist() == [7.0] * 4 and built == [0, 1, 1]
    # Without `share` nothing is kept or reused.
    store.with_values(["w"], build)
    assert built == [0, 1, 1, 1]


def test_a_worker_that_beats_has_joined_a_restarted_shard():
    # A restarted shard never sees the registration of workers that were already running;
    # their heartbeats tell it they joined.
    store = ShardStore(num_workers=2)
    store.register(0)
    store.heartbeat(1, local_step=600, loss=0.5)
    workers = {w[0]: w for w in store.stats()["workers"]}
    assert workers[0][1] and workers[1][1] and workers[1][3] == 600


def test_a_table_cap_is_checked_and_kept_on_the_shard():
    store = ShardStore()
    spec = {"name": "t", "dim": 2, "dtype": "float32", "initializer": {"kind": "zeros"},
            "max_rows": 5}
    with pytest.raises(InvalidArgumentError, match="'t': max_rows -1"):
        store.declare_tables([dict(spec, max_rows=-1)])
    store.declare_tables([spec])
    store.declare_tables([spec])  # alike: a no-op
    with pytest.raises(InvalidArgumentError, match="max_rows 5; it cannot be .* max_rows 6"):
        store.declare_tables([dict(spec, max_rows=6)])
    for step in range(4):
        store.lookup_keys([("t", np.arange(step * 3, step * 3 + 3), None, True)], step)
    assert len(store.tables.held["t"].table) <= 5
    assert store.table_stats()["t"]["evicted"] == 7
