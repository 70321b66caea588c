"""The parameter stream: a parameter server publishes what it changes (Follow), a follower
mirrors it. A real `python -m psflow.ps` process trained by pushes from the test; followers
that end equal to it row for row (creations, updates, evictions by steps_to_live and by
max_rows), that resync after a disconnect, after being dropped for falling behind, and after
the server restarts."""

import os
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest

from psflow.checkpoint import read_shard_tables
from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb
from psflow.proto import psflow_pb2_grpc as pb_grpc
from psflow.ps.shard_server import ParameterServer
from psflow.serving.param_follower import ShardFollower

SGD = pb.UpdateRule(name="sgd", hyper={"learning_rate": 0.1})
TIMEOUT = 20
PS = [sys.executable, "-m", "psflow.ps"]


def start_ps(tmp_path, port=0, *args):
    port_file = tmp_path / f"ps-{time.monotonic_ns()}.port"
    process = subprocess.Popen(
        PS + ["--task-index", "0", "--num-workers", "1", "--port", str(port), "--port-file",
              str(port_file), "--checkpoint-root", str(tmp_path), "--publish-period", "0.05",
              "--dense-period", "0.2", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + TIMEOUT
    while not port_file.exists():
        if process.poll() is not None:
            raise AssertionError(f"ps exited {process.returncode}: {process.stderr.read()}")
        assert time.monotonic() < deadline, "the ps did not write its port file"
        time.sleep(0.02)
    return process, int(port_file.read_text())


def stop_ps(process):
    process.kill()
    process.communicate(timeout=TIMEOUT)


@pytest.fixture
def ps_process(tmp_path):
    process, port = start_ps(tmp_path)
    yield f"127.0.0.1:{port}"
    stop_ps(process)


def connect(address):
    channel = grpc.insecure_channel(address, options=codec.CHANNEL_OPTIONS)
    grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
    return channel, pb_grpc.ParameterServerStub(channel)


def declare(stub):
    """Tables "ev" (dim 4, rows evicted after 3 steps without an update) and "cap" (dim 2, at
    most 40 rows), and a dense "w" (3, 2)."""
    stub.DeclareVariables(pb.DeclareVariablesRequest(
        variables=[pb.VariableSpec(name="w", dtype="float32", shape=[3, 2])],
        tables=[pb.TableSpec(name="ev", dim=4, dtype="float32", initializer="random_normal",
                             initializer_params={"stddev": 0.1, "seed": 1}, steps_to_live=3),
                pb.TableSpec(name="cap", dim=2, dtype="float32", initializer="ones",
                             max_rows=40)]), timeout=TIMEOUT)
    request = pb.InitializeVariablesRequest()
    codec.encode(np.zeros((3, 2), np.float32), request.values.add(name="w").tensor)
    stub.InitializeVariables(request, timeout=TIMEOUT)


def train_step(stub, step, keys_by_table, rng):
    """A training step as a worker takes it: a training lookup of each table's keys (creating
    rows), then a push of their gradients and of w's, advancing the global step."""
    request = pb.PullRowsRequest(global_step=step)
    for name, keys in keys_by_table.items():
        codec.encode(keys, request.keys.add(name=name, train=True).keys)
    reply = stub.PullRows(request, timeout=TIMEOUT)
    push = pb.PushRequest(rule=SGD, increment_global_step=True, global_step=step)
    for item in reply.values:
        keys = keys_by_table[item.name]
        gradient = push.gradients.add(name=item.name, keyed=True)
        dim = codec.decode(item.tensor).shape[1]
        codec.encode(rng.normal(size=(keys.size, dim)).astype(np.float32), gradient.values)
        codec.encode(keys, gradient.indices)
    codec.encode(rng.normal(size=(3, 2)).astype(np.float32),
                 push.gradients.add(name="w").values)
    stub.Push(push, timeout=TIMEOUT)


def train(stub, steps, rng, first=0, key_range=200):
    """Steps `first`... : "ev" gets keys below key_range, "cap" ever-new keys (from 5 x step);
    returns the last step's keys."""
    for step in range(first, first + steps):
        keys = {"ev": np.unique(rng.integers(0, key_range, size=30)).astype(np.int64),
                "cap": np.unique(rng.integers(step * 5, step * 5 + 20, size=10)).astype(
                    np.int64)}
        train_step(stub, step, keys, rng)
    return keys


def train_wide(stub, steps, rng):
    """Steps of 1,000 new rows of 1 KiB each in a table "wide": more than a stream's buffers
    hold (gRPC's flow-control windows, then the server's bound per follower)."""
    stub.DeclareVariables(pb.DeclareVariablesRequest(tables=[pb.TableSpec(
        name="wide", dim=256, dtype="float32", initializer="zeros")]), timeout=TIMEOUT)
    for step in range(steps):
        train_step(stub, step, {"wide": np.arange(step * 1000, (step + 1) * 1000)}, rng)


def ps_tables(stub, tmp_path):
    """{table: (sorted keys, their rows)} the server holds, from a checkpoint of its shard."""
    path = tmp_path / f"shard-{time.monotonic_ns()}.npz"
    stub.SaveShard(pb.SaveShardRequest(path=str(path)), timeout=TIMEOUT)
    out = {}
    for name, fields in read_shard_tables(str(path)).items():
        order = np.argsort(fields["keys"])
        out[name] = (fields["keys"][order], fields["values"][order])
    os.remove(path)
    return out


def ps_dense(stub, name="w"):
    reply = stub.Pull(pb.PullRequest(names=[name]), timeout=TIMEOUT)
    return codec.decode(reply.values[0].tensor)


def assert_converges(follower, stub, tmp_path, within=10.0):
    """The follower's tables and dense values equal the server's, row for row, once the
    stream has drained (the server is idle meanwhile)."""
    expected = ps_tables(stub, tmp_path)
    dense = ps_dense(stub)
    deadline = time.monotonic() + within
    while True:
        try:
            mirror = {name: follower.export(name) for name in expected}
            if all(np.array_equal(mirror[n][0], expected[n][0]) and
                   np.array_equal(mirror[n][1], expected[n][1]) for n in expected) and \
                    np.array_equal(follower.dense("w"), dense):
                return expected
        except Exception:  # noqa: BLE001 -- not synced yet
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            got = {n: mirror[n][0].size for n in expected}
            raise AssertionError(f"the follower did not converge: {got} rows, expected "
                                 f"{ {n: v[0].size for n, v in expected.items()} }")
        time.sleep(0.05)


def test_a_follower_mirrors_creations_updates_and_evictions(ps_process, tmp_path):
    rng = np.random.default_rng(0)
    channel, stub = connect(ps_process)
    declare(stub)
    train(stub, 5, rng)  # rows before the follower comes: in its snapshot
    follower = ShardFollower(ps_process).start()
    try:
        assert follower.wait_synced(TIMEOUT)
        last = train(stub, 25, rng, first=5, key_range=400)
        expected = assert_converges(follower, stub, tmp_path)
        stats = {t.name: t for t in stub.GetStats(pb.StatsRequest(), timeout=TIMEOUT).tables}
        assert stats["ev"].evicted > 0 and stats["cap"].evicted > 0  # both kinds happened
        assert stats["cap"].rows <= 40 and expected["cap"][0].size == stats["cap"].rows
        assert follower.stats["deltas"] > 1 and follower.stats["snapshots"] == 1
        # max_rows kept the most recently updated: the last step's keys, none of long ago
        assert set(last["cap"].tolist()) <= set(expected["cap"][0].tolist())
        assert expected["cap"][0].min() >= 5 * (29 - 10)
    finally:
        follower.stop()
        channel.close()


@pytest.mark.cluster  # a concurrency or timing run
def test_a_disconnected_follower_catches_up_and_a_fresh_one_gets_a_snapshot(ps_process,
                                                                          tmp_path):
    rng = np.random.default_rng(1)
    channel, stub = connect(ps_process)
    declare(stub)
    follower = ShardFollower(ps_process, retry_s=0.5).start()
    try:
        assert follower.wait_synced(TIMEOUT)
        train(stub, 5, rng)
        assert_converges(follower, stub, tmp_path)
        follower.drop_connection()
        train(stub, 5, rng, first=5)  # while it is away (it comes back after retry_s)
        assert_converges(follower, stub, tmp_path)
        assert follower.stats["resyncs"] >= 1
        assert follower.stats["snapshots"] == 1  # it continued from its position
    finally:
        follower.stop()
    late = ShardFollower(ps_process).start()
    try:
        assert_converges(late, stub, tmp_path)
        assert late.stats["snapshots"] == 1
    finally:
        late.stop()
        channel.close()


@pytest.mark.cluster  # a concurrency or timing run
def test_a_follower_that_falls_behind_is_dropped_and_resyncs(tmp_path):
    server = ParameterServer(port=0, publish_period=0.02, dense_period=0.1,
                             follower_buffer_bytes=4096, checkpoint_root=str(tmp_path)).start()
    address = f"127.0.0.1:{server.port}"
    rng = np.random.default_rng(2)
    channel, stub = connect(address)
    declare(stub)
    follower = ShardFollower(address, retry_s=0.05)
    applied = follower._apply
    slow = {"left": 3}

    def apply_slowly(messages):  # a follower busy elsewhere for a while
        if slow["left"] and not messages[0].snapshot:
            slow["left"] -= 1
            time.sleep(0.5)
        applied(messages)
    follower._apply = apply_slowly
    follower.start()
    try:
        assert follower.wait_synced(TIMEOUT)
        train(stub, 5, rng)
        train_wide(stub, 20, rng)  # the server goes on while the follower sleeps
        assert_converges(follower, stub, tmp_path)
        assert server.publisher.stats["dropped"] >= 1
        assert "resync" in (follower.last_error or "")
        assert follower.stats["snapshots"] >= 1
    finally:
        follower.stop()
        channel.close()
        server.stop(grace=0)


def test_follow_over_the_wire_drops_a_reader_that_stops_reading(tmp_path):
    server = ParameterServer(port=0, publish_period=0.02, follower_buffer_bytes=2048).start()
    channel, stub = connect(f"127.0.0.1:{server.port}")
    try:
        declare(stub)
        stream = stub.Follow(pb.FollowRequest(), timeout=TIMEOUT)
        first = next(stream)
        assert first.snapshot and first.from_seq == 0 and first.incarnation
        assert {t.name for t in first.tables} == {"ev", "cap"}
        train_wide(stub, 20, np.random.default_rng(3))  # the stream is not read meanwhile
        with pytest.raises(grpc.RpcError) as caught:
            for _ in stream:
                pass
        assert caught.value.code() == grpc.StatusCode.ABORTED
        assert "resync" in caught.value.details()
    finally:
        channel.close()
        server.stop(grace=0)


@pytest.mark.cluster  # a server process killed and started again
def test_a_restarted_server_is_a_new_incarnation_and_forces_a_resync(tmp_path):
    process, port = start_ps(tmp_path)
    address = f"127.0.0.1:{port}"
    rng = np.random.default_rng(4)
    channel, stub = connect(address)
    declare(stub)
    train(stub, 5, rng)
    follower = ShardFollower(address, retry_s=0.1).start()
    try:
        assert_converges(follower, stub, tmp_path)
        before = follower.incarnation
        channel.close()
        stop_ps(process)
        process, _ = start_ps(tmp_path, port)
        channel, stub = connect(address)
        declare(stub)
        train(stub, 3, rng)  # fewer rows than before: the old ones must go
        assert_converges(follower, stub, tmp_path)
        assert follower.incarnation != before
        assert follower.stats["snapshots"] == 2
    finally:
        follower.stop()
        channel.close()
        stop_ps(process)


def test_following_needs_the_jobs_token():
    server = ParameterServer(port=0, token="job-secret").start()
    address = f"127.0.0.1:{server.port}"
    right = ShardFollower(address, token="job-secret").start()
    wrong = ShardFollower(address, token="guess", retry_s=0.05).start()
    try:
        assert right.wait_synced(TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while wrong.last_error is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "UNAUTHENTICATED" in wrong.last_error
        assert not wrong.wait_synced(0.1)
    finally:
        right.stop()
        wrong.stop()
        server.stop(grace=0)


def test_a_bad_follow_request_is_refused_and_the_server_serves_on():
    server = ParameterServer(port=0).start()
    channel, stub = connect(f"127.0.0.1:{server.port}")
    try:
        follow = channel.unary_stream("/psflow.ParameterServer/Follow")
        with pytest.raises(grpc.RpcError) as caught:
            list(follow(b"\xff\xff\xff", timeout=TIMEOUT))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "FollowRequest" in caught.value.details()
        stream = stub.Follow(pb.FollowRequest(after_seq=12345, incarnation=7), timeout=TIMEOUT)
        first = next(stream)  # a position it cannot continue from: a snapshot
        assert first.snapshot and first.last and first.from_seq == 0
        stream.cancel()
    finally:
        channel.close()
        server.stop(grace=0)


@pytest.mark.cluster  # a concurrency run of a few seconds
def test_a_follower_converges_under_concurrent_pushes(tmp_path):
    import threading
    server = ParameterServer(port=0, publish_period=0.01, dense_period=0.05,
                             checkpoint_root=str(tmp_path)).start()
    address = f"127.0.0.1:{server.port}"
    channel, stub = connect(address)
    declare(stub)
    followers = [ShardFollower(address, retry_s=0.05).start() for _ in range(2)]
    errors = []

    def pusher(seed):
        rng = np.random.default_rng(seed)
        try:
            for step in range(40):
                train(stub, 1, rng, first=step, key_range=300)
                if seed == 1 and step % 10 == 5:
                    followers[1].drop_connection()
        except Exception as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)
    threads = [threading.Thread(target=pusher, args=(seed,)) for seed in range(3)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        for follower in followers:
            assert_converges(follower, stub, tmp_path)
    finally:
        for follower in followers:
            follower.stop()
        channel.close()
        server.stop(grace=0)
