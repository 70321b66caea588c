"""One parameter server over real gRPC on 127.0.0.1: status codes for bad input (and serving on
afterwards), health, concurrent pushes, large variable parts, and the `python -m psflow.ps`
process's lifecycle."""

import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb
from psflow.proto import psflow_pb2_grpc as pb_grpc
from psflow.ps.shard_server import SERVICE_NAME, ParameterServer

SGD = pb.UpdateRule(name="sgd", hyper={"learning_rate": 1.0})
TIMEOUT = 30


@pytest.fixture
def server():
    ps = ParameterServer(shard=0, num_workers=2, port=0).start()
    yield ps
    ps.stop(grace=0)


@pytest.fixture
def stub(channel):
    return pb_grpc.ParameterServerStub(channel)


def declare(stub, **specs):
    """specs: name=(dtype, shape)."""
    return stub.DeclareVariables(pb.DeclareVariablesRequest(variables=[
        pb.VariableSpec(name=n, dtype=d, shape=s) for n, (d, s) in specs.items()]),
        timeout=TIMEOUT)


def initialize(stub, overwrite=False, **values):
    request = pb.InitializeVariablesRequest(overwrite=overwrite)
    for name, value in values.items():
        codec.encode(value, request.values.add(name=name).tensor)
    return stub.InitializeVariables(request, timeout=TIMEOUT)


def pull(stub, *names):
    """{name: (array, version)}, and the global step."""
    reply = stub.Pull(pb.PullRequest(names=names), timeout=TIMEOUT)
    return ({item.name: (codec.decode(item.tensor), item.version) for item in reply.values},
            reply.global_step)


def push_request(gradients, rule=SGD, **fields):
    """gradients: [(name, values, indices or None, version)]."""
    request = pb.PushRequest(rule=rule, **fields)
    for name, values, indices, version in gradients:
        gradient = request.gradients.add(name=name, version=version)
        codec.encode(values, gradient.values)
        if indices is not None:
            codec.encode(indices, gradient.indices)
    return request


@pytest.fixture
def ready(stub):
    """A stub to a server with w (float32 (2, 3), initialized to ones), e (float32 (5, 2),
    zeros) and u (declared only)."""
    declare(stub, w=("float32", (2, 3)), e=("float32", (5, 2)), u=("float32", (4,)))
    initialize(stub, w=np.ones((2, 3), np.float32), e=np.zeros((5, 2), np.float32))
    return stub


def assert_still_serving(stub):
    values, _ = pull(stub, "w")
    np.testing.assert_array_equal(values["w"][0], np.ones((2, 3)))


def raw_tensor(dtype, shape, nbytes):
    return pb.Tensor(dtype=dtype, shape=shape, content=b"\0" * nbytes)


def _push(gradients, **fields):
    return lambda stub: stub.Push(push_request(gradients, **fields), timeout=TIMEOUT)


def _bad_push_message(stub):
    request = pb.PushRequest(rule=SGD)
    request.gradients.add(name="w", values=raw_tensor("float32", [2, 3], 20))
    return stub.Push(request, timeout=TIMEOUT)


def _unknown_dtype_push(stub):
    request = pb.PushRequest(rule=SGD)
    request.gradients.add(name="w", values=raw_tensor("complex64", [2, 3], 48))
    return stub.Push(request, timeout=TIMEOUT)


def _bad_init_message(stub):
    request = pb.InitializeVariablesRequest(overwrite=True)
    request.values.add(name="w", tensor=raw_tensor("float32", [2, 3], 4))
    return stub.InitializeVariables(request, timeout=TIMEOUT)


NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION

BAD_CALLS = {
    "pull unknown": (lambda s: pull(s, "w", "nope"), NOT_FOUND, ["'nope'"]),
    "pull uninitialized": (lambda s: pull(s, "u"), PRECONDITION, ["'u'"]),
    "push unknown": (_push([("nope", np.ones(2, np.float32), None, 0)]), NOT_FOUND, ["'nope'"]),
    "push uninitialized": (_push([("u", np.ones(4, np.float32), None, 0)]), PRECONDITION,
                           ["'u'"]),
    "push wrong shape": (_push([("w", np.ones((3, 2), np.float32), None, 0)]), INVALID,
                         ["'w'", "(3, 2)", "(2, 3)"]),
    "push int gradient": (_push([("w", np.ones((2, 3), np.int32), None, 0)]), INVALID,
                          ["'w'", "int32", "float32"]),
    "push wrong byte count": (_bad_push_message, INVALID, ["20 bytes", "24 bytes"]),
    "push unknown dtype": (_unknown_dtype_push, INVALID, ["complex64"]),
    "push unknown rule": (_push([("w", np.ones((2, 3), np.float32), None, 0)],
                                rule=pb.UpdateRule(name="rmsprop")), INVALID, ["rmsprop"]),
    "push missing hyperparameter": (_push([("w", np.ones((2, 3), np.float32), None, 0)],
                                          rule=pb.UpdateRule(name="sgd")), INVALID,
                                    ["learning_rate"]),
    "push pulling unknown": (_push([("w", np.ones((2, 3), np.float32), None, 0)], pull=["zz"]),
                             NOT_FOUND, ["'zz'"]),
    "push pulling uninitialized": (_push([("w", np.ones((2, 3), np.float32), None, 0)],
                                         pull=["u"]), PRECONDITION, ["'u'"]),
    "sparse row out of range": (_push([("e", np.ones((1, 2), np.float32),
                                        np.array([5], np.int64), 0)]), INVALID,
                                ["'e'", "row index 5"]),
    "sparse wrong width": (_push([("e", np.ones((2, 3), np.float32),
                                   np.array([0, 1], np.int64), 0)]), INVALID,
                           ["'e'", "(2, 3)", "(2, 2)"]),
    "declare conflicting": (lambda s: declare(s, w=("float32", (3, 2))), INVALID,
                            ["'w'", "(2, 3)", "(3, 2)"]),
    "declare bad dtype": (lambda s: declare(s, z=("complex64", (1,))), INVALID, ["complex64"]),
    "initialize wrong shape": (lambda s: initialize(s, w=np.ones((3, 3), np.float32)), INVALID,
                               ["'w'", "(3, 3)", "(2, 3)"]),
    "initialize unknown": (lambda s: initialize(s, zz=np.ones(1, np.float32)), NOT_FOUND,
                           ["'zz'"]),
    "initialize wrong byte count": (_bad_init_message, INVALID, ["4 bytes", "24 bytes"]),
    "wait unknown": (lambda s: s.WaitInitialized(pb.WaitInitializedRequest(
        names=["ghost"], timeout_ms=10), timeout=TIMEOUT), NOT_FOUND, ["'ghost'"]),
    "register out of range": (lambda s: s.RegisterWorker(pb.WorkerRequest(task_index=2),
                                                         timeout=TIMEOUT), INVALID, ["worker 2"]),
    "done out of range": (lambda s: s.WorkerDone(pb.WorkerRequest(task_index=-1),
                                                 timeout=TIMEOUT), INVALID, ["worker -1"]),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_input_gets_its_status_and_the_server_keeps_serving(ready, server, case):
    call, code, words = BAD_CALLS[case]
    with pytest.raises(grpc.RpcError) as info:
        call(ready)
    assert info.value.code() == code, info.value.details()
    for word in words:
        assert word in info.value.details()
    assert_still_serving(ready)
    # Nothing of a refused call changed the state.
    values, _ = pull(ready, "w", "e")
    assert values["w"][1] == 0 and values["e"][1] == 0
    assert not server.store.all_done.is_set()


def test_unexpected_error_is_internal_and_the_server_keeps_serving(ready, server, monkeypatch):
    def broken():
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(server.store, "stats", broken)
    with pytest.raises(grpc.RpcError) as info:
        ready.GetStats(pb.StatsRequest(), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "disk on fire" in info.value.details()
    assert_still_serving(ready)


def test_health_serving_then_not_serving(server, channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=TIMEOUT)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    stopper = threading.Thread(target=server.stop, kwargs={"grace": 0.5})
    stopper.start()
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    stopper.join(10)
    assert server.stopped and server.wait_for_termination(0)


def test_declare_initialize_pull_push_round_trip(stub):
    assert list(declare(stub, w=("float32", (2, 2)), b=("float64", ())).initialized) == []
    reply = initialize(stub, w=np.eye(2, dtype=np.float32), b=np.float64(3))
    assert sorted(reply.assigned) == ["b", "w"]
    assert list(declare(stub, w=("float32", (2, 2))).initialized) == ["w"]
    # A second initialize keeps the value; overwrite replaces it.
    assert list(initialize(stub, w=np.zeros((2, 2), np.float32)).assigned) == []
    values, step = pull(stub, "w", "b")
    np.testing.assert_array_equal(values["w"][0], np.eye(2))
    assert values["b"][0].shape == () and float(values["b"][0]) == 3.0 and step == 0
    rule = pb.UpdateRule(name="momentum", hyper={"learning_rate": 0.5, "momentum": 0.5})
    grads = [("w", np.ones((2, 2), np.float32), None, 0), ("b", np.float64(2), None, 0)]
    for k in range(2):
        reply = stub.Push(push_request(grads, rule=rule, worker=1, increment_global_step=True,
                                       global_step=k), timeout=TIMEOUT)
        assert list(reply.staleness) == [0, 0] and reply.global_step == k + 1
        grads = [(n, v, i, k + 1) for n, v, i, _ in grads]
    values, step = pull(stub, "w", "b")
    # momentum: accum 1 then 1.5; value -= 0.5 * accum
    np.testing.assert_array_equal(values["w"][0], np.eye(2, dtype=np.float32) - 1.25)
    assert float(values["b"][0]) == 3.0 - 2.5
    assert values["w"][1] == 2 and step == 2
    assert list(initialize(stub, overwrite=True, w=np.zeros((2, 2), np.float32)).assigned) \
        == ["w"]
    np.testing.assert_array_equal(pull(stub, "w")[0]["w"][0], np.zeros((2, 2)))


def test_push_reply_carries_the_updated_values_asked_for(ready):
    reply = ready.Push(push_request([("w", np.ones((2, 3), np.float32), None, 0)],
                                    pull=["w", "e"]), timeout=TIMEOUT)
    got = {item.name: (codec.decode(item.tensor), item.version) for item in reply.values}
    np.testing.assert_array_equal(got["w"][0], np.zeros((2, 3), np.float32))  # SGD, rate 1
    assert got["w"][1] == 1
    np.testing.assert_array_equal(got["e"][0], np.zeros((5, 2)))
    assert got["e"][1] == 0
    assert list(ready.Push(push_request([("w", np.ones((2, 3), np.float32), None, 1)]),
                           timeout=TIMEOUT).values) == []


def test_sparse_push_over_the_wire(ready):
    indices = np.array([4, 0, 4], np.int64)
    values = np.array([[1, 2], [3, 4], [5, 6]], np.float32)
    ready.Push(push_request([("e", values, indices, 0)]), timeout=TIMEOUT)
    expected = np.zeros((5, 2), np.float32)
    expected[4] = [-6, -8]
    expected[0] = [-3, -4]
    result, _ = pull(ready, "e")
    np.testing.assert_array_equal(result["e"][0], expected)
    assert result["e"][1] == 1


def test_wait_initialized_wakes_on_initialize_and_does_not_block_others(stub, channel):
    declare(stub, a=("float32", (3,)), b=("float32", (1,)))
    initialize(stub, b=np.ones(1, np.float32))
    waits = [stub.WaitInitialized.future(pb.WaitInitializedRequest(names=["a", "b"],
                                                                   timeout_ms=20_000),
                                         timeout=TIMEOUT) for _ in range(8)]
    time.sleep(0.2)
    assert not any(w.done() for w in waits)
    # Blocked waits do not starve other calls.
    started = time.monotonic()
    assert float(pull(stub, "b")[0]["b"][0][0]) == 1.0
    assert time.monotonic() - started < 2
    initialize(stub, a=np.zeros(3, np.float32))
    for w in waits:
        reply = w.result(timeout=5)
        assert reply.ready and list(reply.missing) == []


def test_cancelled_waits_free_their_threads(stub, server):
    """More abandoned waits than the server has threads: each frees its thread when its
    caller goes away, so pulls are still served at once."""
    declare(stub, a=("float32", (1,)), b=("float32", (1,)))
    initialize(stub, b=np.ones(1, np.float32))
    waits = [stub.WaitInitialized.future(pb.WaitInitializedRequest(names=["a"],
                                                                   timeout_ms=60_000),
                                         timeout=TIMEOUT) for _ in range(server.threads + 6)]
    time.sleep(0.3)
    for w in waits:
        w.cancel()
    started = time.monotonic()
    reply = stub.Pull(pb.PullRequest(names=["b"]), timeout=10)
    assert time.monotonic() - started < 5
    assert codec.decode(reply.values[0].tensor)[0] == 1.0


def test_wait_initialized_times_out_with_missing(stub):
    declare(stub, a=("float32", (3,)), b=("float32", (1,)))
    initialize(stub, b=np.ones(1, np.float32))
    started = time.monotonic()
    reply = stub.WaitInitialized(pb.WaitInitializedRequest(names=["a", "b"], timeout_ms=300),
                                 timeout=TIMEOUT)
    assert not reply.ready and list(reply.missing) == ["a"]
    assert 0.25 <= time.monotonic() - started < 3


@pytest.mark.cluster  # a concurrency or timing run
def test_wait_initialized_answers_before_the_callers_deadline(stub):
    declare(stub, a=("float32", (1,)))
    reply = stub.WaitInitialized(pb.WaitInitializedRequest(names=["a"], timeout_ms=60_000),
                                 timeout=1.0)
    assert not reply.ready and list(reply.missing) == ["a"]


def test_membership_and_stats_over_the_wire(ready, server):
    assert ready.RegisterWorker(pb.WorkerRequest(task_index=0), timeout=TIMEOUT).done == 0
    reply = ready.Heartbeat(pb.HeartbeatRequest(task_index=0, local_step=5, loss=0.5),
                            timeout=TIMEOUT)
    assert (reply.num_workers, reply.done) == (2, 0)
    ready.Push(push_request([("w", np.ones((2, 3), np.float32), None, 0)], worker=0),
               timeout=TIMEOUT)
    assert ready.WorkerDone(pb.WorkerRequest(task_index=0), timeout=TIMEOUT).done == 1
    stats = ready.GetStats(pb.StatsRequest(), timeout=TIMEOUT)
    assert (stats.shard, stats.pushes, stats.variables) == (0, 1, 3)
    assert stats.bytes_received > 0 and len(stats.staleness_histogram) == 32
    assert stats.staleness_histogram[0] == 1
    [worker] = stats.workers
    assert (worker.task_index, worker.registered, worker.done, worker.local_step,
            worker.loss, worker.pushes) == (0, True, True, 5, 0.5, 1)
    assert not server.stopped
    # The last worker done: the server stops by itself, after answering.
    reply = ready.WorkerDone(pb.WorkerRequest(task_index=1), timeout=TIMEOUT)
    assert (reply.num_workers, reply.done) == (2, 2)
    assert server.wait_for_termination(10)
    assert server.stop_reason == "all workers are done"


@pytest.mark.cluster
def test_concurrent_async_pushes_lose_nothing(ready):
    threads, pushes = 8, 200
    size = 10_000
    declare(ready, c=("float32", (size,)))
    initialize(ready, c=np.zeros(size, np.float32))
    request = push_request([("c", np.full(size, -1.0, np.float32), None, 0),
                            ("w", np.full((2, 3), -0.25, np.float32), None, 0)],
                           increment_global_step=True)
    errors = []

    def client():
        try:
            futures = [ready.Push.future(request, timeout=60) for _ in range(pushes)]
            for f in futures:
                f.result()
        except Exception as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)

    running = [threading.Thread(target=client) for _ in range(threads)]
    for t in running:
        t.start()
    for t in running:
        t.join()
    assert not errors, errors[:3]
    total = threads * pushes
    values, step = pull(ready, "c", "w")
    np.testing.assert_array_equal(values["c"][0], np.full(size, total, np.float32))
    np.testing.assert_array_equal(values["w"][0], np.full((2, 3), 1 + total * 0.25))
    assert values["c"][1] == values["w"][1] == total
    assert step == total


PART_ROWS, PART_COLS = 16_384, 1024  # float32: exactly MAX_PAYLOAD_BYTES (64 MiB)


def _part_value(k):
    """A recognizable value for part k: element (r, c) is k * 1000 + r % 977 + c / 1024."""
    rows = (np.arange(PART_ROWS, dtype=np.float32) % 977)[:, None]
    cols = np.arange(PART_COLS, dtype=np.float32)[None, :] / 1024
    return (rows + cols + np.float32(k * 1000)).astype(np.float32)


SAMPLES = [(0, 0), (1, 1023), (5000, 17), (PART_ROWS - 1, PART_COLS - 1), (9999, 512)]


def _sized(message):
    size = message.ByteSize()
    assert size <= codec.MAX_MESSAGE_BYTES
    return size


@pytest.mark.cluster  # a job's load, not a job: 640 MB through one server takes 10-20 s
def test_ten_64mb_parts_of_a_640mb_variable(stub):
    """A 640 MB variable split by the client into ten 64 MB parts, each a variable of its own
    ("big/part_k"): every part is initialized, pushed and pulled in one call of its own, and
    no message exceeds the limit. Part 0 is compared whole, the others at sampled points."""
    assert PART_ROWS * PART_COLS * 4 == codec.MAX_PAYLOAD_BYTES
    parts = [f"big/part_{k}" for k in range(10)]
    declare(stub, **{name: ("float32", (PART_ROWS, PART_COLS)) for name in parts})
    grad = np.full((PART_ROWS, PART_COLS), -2.0, np.float32)
    grad[5000, 17] = -4.0
    push = push_request([("big/part_0", grad, None, 0)], increment_global_step=True)
    assert codec.MAX_PAYLOAD_BYTES < _sized(push) < codec.MAX_PAYLOAD_BYTES + 1024
    for k, name in enumerate(parts):
        initial = _part_value(k)
        request = pb.InitializeVariablesRequest()
        codec.encode(initial, request.values.add(name=name).tensor)
        _sized(request)
        assert list(stub.InitializeVariables(request, timeout=TIMEOUT).assigned) == [name]
        del request
        if k == 0:
            reply = stub.Pull(pb.PullRequest(names=[name]), timeout=TIMEOUT)
            _sized(reply)
            np.testing.assert_array_equal(codec.decode(reply.values[0].tensor), initial)
            del reply
        push.gradients[0].name = name  # the same gradient for every part
        push.increment_global_step = k == 0
        assert list(stub.Push(push, timeout=TIMEOUT).staleness) == [0]
        reply = stub.Pull(pb.PullRequest(names=[name]), timeout=TIMEOUT)
        assert codec.MAX_PAYLOAD_BYTES < _sized(reply) < codec.MAX_PAYLOAD_BYTES + 1024
        [item] = reply.values
        assert (item.name, item.version) == (name, 1)
        pulled = codec.decode(item.tensor)
        assert pulled.shape == (PART_ROWS, PART_COLS) and pulled.dtype == np.float32
        if k == 0:
            np.testing.assert_array_equal(pulled, initial - grad)
        for r, c in SAMPLES:
            delta = 4.0 if (r, c) == (5000, 17) else 2.0
            expected = np.float32(np.float32(k * 1000 + r % 977 + c / 1024) + delta)
            assert pulled[r, c] == expected, (k, r, c, pulled[r, c], expected)
        del reply, item, pulled
    assert pull(stub)[1] == 1


# -- the process -----------------------------------------------------------------------------
PS = [sys.executable, "-m", "psflow.ps"]


def _start(tmp_path, *args):
    port_file = tmp_path / "ps.port"
    process = subprocess.Popen(PS + ["--port", "0", "--port-file", str(port_file), *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not port_file.exists():
        if process.poll() is not None:
            raise AssertionError(f"ps exited {process.returncode}: {process.stderr.read()}")
        assert time.monotonic() < deadline, "the ps did not write its port file"
        time.sleep(0.05)
    port = int(port_file.read_text())
    assert 0 < port < 65536
    assert not list(tmp_path.glob(".tmp-*"))  # the temporary file was renamed into place
    return process, port


def _finish(process, within):
    try:
        _, err = process.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        raise AssertionError(f"the ps did not exit within {within} s:\n{err}") from None
    return process.returncode, err


@pytest.mark.cluster  # a server process's life and death, seconds long
def test_process_exits_when_all_workers_are_done(tmp_path):
    process, port = _start(tmp_path, "--task-index", "0", "--num-workers", "2")
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=codec.CHANNEL_OPTIONS) as ch:
        stub = pb_grpc.ParameterServerStub(ch)
        declare(stub, w=("float32", (3,)))
        initialize(stub, w=np.zeros(3, np.float32))
        for task in (0, 1):
            stub.RegisterWorker(pb.WorkerRequest(task_index=task), timeout=TIMEOUT)
        stub.Push(push_request([("w", np.ones(3, np.float32), None, 0)],
                               increment_global_step=True), timeout=TIMEOUT)
        values, step = pull(stub, "w")
        np.testing.assert_array_equal(values["w"][0], [-1, -1, -1])
        assert step == 1
        assert stub.WorkerDone(pb.WorkerRequest(task_index=0), timeout=TIMEOUT).done == 1
        time.sleep(0.7)
        assert process.poll() is None  # one worker is still running
        reply = stub.WorkerDone(pb.WorkerRequest(task_index=1), timeout=TIMEOUT)
        assert (reply.num_workers, reply.done) == (2, 2)
    started = time.monotonic()
    code, err = _finish(process, within=10)
    assert code == 0, err
    assert time.monotonic() - started < 5
    assert f"serving shard 0 on 127.0.0.1:{port}" in err
    assert "all workers are done" in err


@pytest.mark.cluster  # a server process's life and death, seconds long
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_process_exits_0_on_signal(tmp_path, signum):
    process, port = _start(tmp_path, "--task-index", "1", "--num-workers", "3")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        # A wait that would block for a minute does not hold up the exit.
        stub = pb_grpc.ParameterServerStub(ch)
        declare(stub, w=("float32", (1,)))
        wait = stub.WaitInitialized.future(pb.WaitInitializedRequest(names=["w"],
                                                                     timeout_ms=60_000))
        time.sleep(0.2)
        process.send_signal(signum)
        code, err = _finish(process, within=10)
        assert code == 0, err
        assert signal.Signals(signum).name in err
        try:
            reply = wait.result(timeout=5)
            assert not reply.ready
        except grpc.RpcError:
            pass  # cancelled by the stop: also an answer


@pytest.mark.cluster  # a server process's life and death, seconds long
def test_process_exits_when_its_parent_is_gone(tmp_path):
    parent = subprocess.Popen(["sleep", "60"])
    try:
        process, _ = _start(tmp_path, "--task-index", "0", "--num-workers", "1",
                            "--parent-pid", str(parent.pid))
        assert process.poll() is None
        # The parent ends (and stays unreaped for a while: a zombie counts as gone).
        parent.kill()
        code, err = _finish(process, within=8)
        assert code == 0, err
        assert f"parent process {parent.pid} is gone" in err
    finally:
        parent.wait()


@pytest.mark.cluster  # a server process's life and death, seconds long
def test_process_exits_when_reparented(tmp_path):
    """The launcher passes its own pid; when it dies the ps is re-parented and exits."""
    port_file = tmp_path / "ps.port"
    command = " ".join(PS + ["--task-index", "0", "--num-workers", "1", "--port", "0",
                             "--port-file", str(port_file), "--parent-pid", "$$"])
    # The shell (the ps's parent) ends once the ps serves, as a launcher killed mid-job does.
    serving = f"i=0; while [ ! -e {port_file} ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done"
    shell = subprocess.Popen(["sh", "-c", f"{command} & echo $!; {serving}"],
                             stdout=subprocess.PIPE, text=True)
    ps_pid = int(shell.stdout.readline())
    shell.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(ps_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(ps_pid, signal.SIGKILL)
        raise AssertionError("the ps outlived its parent")
    assert port_file.exists()


@pytest.mark.cluster
def test_taken_port_fails_or_falls_back(tmp_path):
    holder = ParameterServer(port=0).start()
    try:
        args = ["--task-index", "0", "--num-workers", "1", "--port", str(holder.port)]
        taken = subprocess.run(PS + args, capture_output=True, text=True, timeout=20)
        assert taken.returncode == 1
        assert f"cannot bind 127.0.0.1:{holder.port}" in taken.stderr
        process = subprocess.Popen(PS + args + ["--port-fallback", "--port-file",
                                                str(tmp_path / "p")],
                                   stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while not (tmp_path / "p").exists():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        assert int((tmp_path / "p").read_text()) != holder.port
        process.terminate()
        assert _finish(process, within=10)[0] == 0
    finally:
        holder.stop(grace=0)


@pytest.mark.parametrize("args, words", [
    (["--task-index", "0", "--num-workers", "0"], ["--num-workers", "at least 1"]),
    (["--task-index", "0", "--num-workers", "2", "--port", "-1"], ["--port", "-1"]),
    (["--task-index", "0", "--num-workers", "2", "--port", "70000"], ["--port", "70000"]),
    (["--task-index", "-1", "--num-workers", "2"], ["--task-index"]),
    (["--task-index", "x", "--num-workers", "2"], ["--task-index", "'x'"]),
    (["--num-workers", "2"], ["--task-index"]),
    (["--task-index", "0", "--num-workers", "2", "--log-level", "LOUD"], ["--log-level"]),
    (["--task-index", "0", "--num-workers", "2", "--publish-period", "0"],
     ["--publish-period", "more than 0"]),
    (["--task-index", "0", "--num-workers", "2", "--dense-period", "x"], ["--dense-period"]),
    (["--task-index", "0", "--num-workers", "2", "--follower-buffer-bytes", "0"],
     ["--follower-buffer-bytes"]),
])
def test_bad_cli_exits_2_with_one_line(args, words, capsys):
    from psflow.ps.__main__ import parse_args
    with pytest.raises(SystemExit) as exit_info:
        parse_args(args)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("python -m psflow.ps: error:")
    for word in words:
        assert word in lines[0]


def test_the_process_itself_refuses_a_bad_command_line():
    result = subprocess.run(PS + ["--task-index", "0", "--num-workers", "0"],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m psflow.ps: error:"), lines
    assert "--num-workers" in lines[0]
