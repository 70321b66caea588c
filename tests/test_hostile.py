"""A parameter server treated as an attacker or an unlucky operator would: garbage and
malformed requests get INVALID_ARGUMENT (never INTERNAL), poisoned gradients and bad slots are
refused, checkpoints stay inside their root, and replies cannot be made to blow up memory."""

import errno
import importlib.util
import json
from pathlib import Path

import grpc
import numpy as np
import pytest

import psflow
from psflow import checkpoint
from psflow.errors import DataLossError
from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb
from psflow.proto import psflow_pb2_grpc as pb_grpc
from psflow.ps.dense_variables import MAX_REPLY_BYTES
from psflow.ps.shard_server import ParameterServer

SGD = pb.UpdateRule(name="sgd", hyper={"learning_rate": 1.0})
TIMEOUT = 30
METHODS = [m.name for m in pb.DESCRIPTOR.services_by_name["ParameterServer"].methods]


@pytest.fixture
def server(tmp_path):
    ps = ParameterServer(shard=0, num_workers=2, checkpoint_root=tmp_path / "root").start()
    (tmp_path / "root").mkdir()
    yield ps
    ps.stop(grace=0)


@pytest.fixture
def stub(channel):
    stub = pb_grpc.ParameterServerStub(channel)
    stub.DeclareVariables(pb.DeclareVariablesRequest(variables=[
        pb.VariableSpec(name="w", dtype="float32", shape=[2, 3])]), timeout=TIMEOUT)
    request = pb.InitializeVariablesRequest()
    codec.encode(np.ones((2, 3), np.float32), request.values.add(name="w").tensor)
    stub.InitializeVariables(request, timeout=TIMEOUT)
    return stub


def raw(channel, method):
    """`method` taking and returning bytes."""
    return channel.unary_unary(f"/psflow.ParameterServer/{method}", request_serializer=None,
                               response_deserializer=None)


def value_of(stub, name="w"):
    reply = stub.Pull(pb.PullRequest(names=[name]), timeout=TIMEOUT)
    return codec.decode(reply.values[0].tensor)


def push(stub, values, name="w", **fields):
    request = pb.PushRequest(rule=SGD, **fields)
    codec.encode(values, request.gradients.add(name=name).values)
    return stub.Push(request, timeout=TIMEOUT)


def code_of(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


# -- malformed requests --------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_garbage_bytes_are_invalid_argument_for_every_method(channel, stub, method):
    for garbage in (b"\xff\xff\xff\xff", b"\x0a\xff\x01", bytes(range(256))):
        code, details = code_of(lambda g=garbage: raw(channel, method)(g, timeout=TIMEOUT))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, garbage, details)
    np.testing.assert_array_equal(value_of(stub), np.ones((2, 3)))


def test_a_hundred_dimensions_are_invalid_argument(stub):
    code, details = code_of(lambda: stub.DeclareVariables(pb.DeclareVariablesRequest(
        variables=[pb.VariableSpec(name="deep", dtype="float32", shape=[1] * 100)]),
        timeout=TIMEOUT))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "100 dimensions" in details
    request = pb.PushRequest(rule=SGD)
    request.gradients.add(name="w", values=pb.Tensor(dtype="float32", shape=[1] * 100,
                                                     content=b"\0" * 4))
    code, details = code_of(lambda: stub.Push(request, timeout=TIMEOUT))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "100 dimensions" in details


def test_an_unknown_consistency_mode_is_refused_not_taken_as_async(stub):
    code, details = code_of(lambda: push(stub, np.ones((2, 3), np.float32),
                                         consistency=pb.Consistency(mode=7)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "mode 7" in details
    np.testing.assert_array_equal(value_of(stub), np.ones((2, 3)))


# -- poisoned gradients ---------------------------------------------------------------------------
@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf])
def test_non_finite_gradients_are_refused_and_counted(stub, poison):
    grad = np.ones((2, 3), np.float32)
    grad[1, 2] = poison
    code, details = code_of(lambda: push(stub, grad))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'w'" in details and "NaN or Inf" in details
    np.testing.assert_array_equal(value_of(stub), np.ones((2, 3)))
    assert stub.GetStats(pb.StatsRequest(), timeout=TIMEOUT).nonfinite == 1
    # Huge but finite values overflow the quick check and still pass the exact one.
    push(stub, np.full((2, 3), 3e38, np.float32) * 0)
    push(stub, np.full((2, 3), 1e30, np.float32))
    assert np.isfinite(value_of(stub)).all()


def test_a_server_told_so_applies_non_finite_gradients():
    with ParameterServer(allow_nonfinite=True) as ps, \
            grpc.insecure_channel(f"127.0.0.1:{ps.port}") as channel:
        stub = pb_grpc.ParameterServerStub(channel)
        stub.DeclareVariables(pb.DeclareVariablesRequest(variables=[
            pb.VariableSpec(name="w", dtype="float32", shape=[2])]), timeout=TIMEOUT)
        request = pb.InitializeVariablesRequest()
        codec.encode(np.ones(2, np.float32), request.values.add(name="w").tensor)
        stub.InitializeVariables(request, timeout=TIMEOUT)
        push(stub, np.array([np.nan, 1.0], np.float32))
        value = codec.decode(stub.Pull(pb.PullRequest(names=["w"])).values[0].tensor)
        assert np.isnan(value[0]) and value[1] == 0.0


# -- slots -----------------------------------------------------------------------------------------
def _restore_slots(stub, **slots):
    request = pb.InitializeVariablesRequest()
    for name, array in slots.items():
        rule, slot = name.split("_")
        codec.encode(array, request.slots.add(variable="w", rule=rule, slot=slot).tensor)
    return stub.InitializeVariables(request, timeout=TIMEOUT)


@pytest.mark.parametrize("slots, words", [
    ({"adam_m": np.zeros((2, 3), np.float32), "adam_t": np.zeros((), np.int64)},
     "missing v"),
    ({"adam_m": np.zeros((2, 3), np.int32), "adam_v": np.zeros((2, 3), np.float32),
      "adam_t": np.zeros((), np.int64)}, "dtype int32"),
    ({"adam_m": np.zeros((3, 2), np.float32), "adam_v": np.zeros((2, 3), np.float32),
      "adam_t": np.zeros((), np.int64)}, "shape (3, 2)"),
    ({"momentum_momentum": np.zeros((2, 3), np.float32),
      "momentum_velocity": np.zeros((2, 3), np.float32)}, "unknown velocity"),
])
def test_bad_slots_are_refused_and_later_pushes_still_work(stub, slots, words):
    code, details = code_of(lambda: _restore_slots(stub, **slots))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and words in details, details
    adam = pb.UpdateRule(name="adam", hyper={"learning_rate": 0.1})
    request = pb.PushRequest(rule=adam)
    codec.encode(np.ones((2, 3), np.float32), request.gradients.add(name="w").values)
    stub.Push(request, timeout=TIMEOUT)
    np.testing.assert_allclose(value_of(stub), np.full((2, 3), 0.9), rtol=1e-5)


def test_slots_of_another_float_width_are_cast(stub):
    _restore_slots(stub, momentum_momentum=np.ones((2, 3), np.float64))
    rule = pb.UpdateRule(name="momentum", hyper={"learning_rate": 1.0, "momentum": 0.5})
    request = pb.PushRequest(rule=rule)
    codec.encode(np.zeros((2, 3), np.float32), request.gradients.add(name="w").values)
    stub.Push(request, timeout=TIMEOUT)
    np.testing.assert_allclose(value_of(stub), np.full((2, 3), 0.5))


# -- checkpoints -------------------------------------------------------------------------------
def test_save_shard_stays_inside_the_checkpoint_root(stub, tmp_path):
    outside = tmp_path / "elsewhere.npz"
    for path in (outside, tmp_path / "root" / ".." / "elsewhere.npz", "/etc/psflow-x.npz"):
        code, details = code_of(lambda p=path: stub.SaveShard(pb.SaveShardRequest(path=str(p)),
                                                              timeout=TIMEOUT))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "outside" in details, details
    assert not outside.exists()
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    code, _ = code_of(lambda: stub.SaveShard(pb.SaveShardRequest(
        path=str(tmp_path / "root" / "link" / "x.npz")), timeout=TIMEOUT))
    assert code == grpc.StatusCode.PERMISSION_DENIED and not (tmp_path / "x.npz").exists()
    inside = tmp_path / "root" / "shard-0.npz"
    reply = stub.SaveShard(pb.SaveShardRequest(path=str(inside)), timeout=TIMEOUT)
    assert inside.exists() and reply.variables == ["w"]


def test_a_server_without_a_checkpoint_root_saves_nothing(tmp_path):
    with ParameterServer() as ps, grpc.insecure_channel(f"127.0.0.1:{ps.port}") as channel:
        stub = pb_grpc.ParameterServerStub(channel)
        code, details = code_of(lambda: stub.SaveShard(
            pb.SaveShardRequest(path=str(tmp_path / "a.npz")), timeout=TIMEOUT))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "no checkpoint root" in details
    assert not (tmp_path / "a.npz").exists()


def test_a_full_disk_is_resource_exhausted_with_the_path_and_the_reason(stub, tmp_path,
                                                                       monkeypatch):
    def full(path, *args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_shard", full)
    path = tmp_path / "root" / "shard-0.npz"
    code, details = code_of(lambda: stub.SaveShard(pb.SaveShardRequest(path=str(path)),
                                                   timeout=TIMEOUT))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(path) in details and "No space left on device" in details
    np.testing.assert_array_equal(value_of(stub), np.ones((2, 3)))


def test_an_index_naming_files_outside_its_checkpoint_is_refused(tmp_path):
    with psflow.Graph().as_default():
        w = psflow.Variable(np.ones(3, np.float32), name="w")
        step = psflow.train.get_or_create_global_step()
        with psflow.Session() as sess:
            sess.run(psflow.global_variables_initializer())
            path = sess.save_checkpoint(str(tmp_path / "ckpt"), [w], step)
    (tmp_path / "elsewhere.npz").write_bytes((tmp_path / "ckpt").joinpath(
        path, "shard-0.npz").read_bytes())
    index_path = tmp_path / "ckpt" / path / "index.json"
    index = json.loads(index_path.read_text())
    for evil in ("../../elsewhere.npz", "/etc/passwd", str(tmp_path / "elsewhere.npz")):
        index["shards"][0]["file"] = evil
        index_path.write_text(json.dumps(index))
        with pytest.raises(DataLossError, match="not a file name inside the checkpoint"):
            psflow.load_model(str(tmp_path / "ckpt"))


# -- replies that would not fit ---------------------------------------------------------------
@pytest.mark.cluster
def test_a_pull_naming_a_variable_many_times_answers_it_once(stub, channel):
    big = 16 * 1024 * 1024  # 64 MiB of float32
    stub.DeclareVariables(pb.DeclareVariablesRequest(variables=[
        pb.VariableSpec(name="big", dtype="float32", shape=[big])]), timeout=TIMEOUT)
    request = pb.InitializeVariablesRequest()
    codec.encode(np.zeros(big, np.float32), request.values.add(name="big").tensor)
    stub.InitializeVariables(request, timeout=TIMEOUT)
    reply = raw(channel, "Pull")(pb.PullRequest(names=["big"] * 40).SerializeToString(),
                                 timeout=TIMEOUT)
    assert len(reply) < 4 * big + 1024


def test_a_pull_too_large_for_one_reply_is_refused_before_anything_is_copied(stub):
    rows = MAX_REPLY_BYTES // 4 // 2 + 1
    stub.DeclareVariables(pb.DeclareVariablesRequest(variables=[
        pb.VariableSpec(name=n, dtype="float32", shape=[rows]) for n in ("a", "b")]),
        timeout=TIMEOUT)
    code, details = code_of(lambda: stub.Pull(pb.PullRequest(names=["a", "b"]), timeout=TIMEOUT))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "at most" in details


# -- fuzzing ---------------------------------------------------------------------------------
def _bench_hostile():
    spec = importlib.util.spec_from_file_location(
        "bench_hostile", Path(__file__).resolve().parent.parent / "bench" / "hostile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.cluster
def test_fuzzed_requests_never_get_internal_and_the_server_keeps_its_variables(channel, stub,
                                                                               server):
    """bench/hostile.py's fuzzer, at 150 requests per method (the bench sends 10k)."""
    before = value_of(stub)
    seen = _bench_hostile().fuzz(channel, per_method=150)
    codes = {code for counts in seen.values() for code in counts}
    assert not codes & {"INTERNAL", "UNKNOWN"}, seen
    assert not server.stopped
    # Fuzzed pushes may have applied well-formed gradients; the variable is still whole.
    after = value_of(stub)
    assert after.shape == before.shape and after.dtype == before.dtype


# -- lifecycle and exposure ----------------------------------------------------------------------
@pytest.mark.cluster  # a server process's life and death, seconds long
def test_a_worker_registering_again_cancels_all_done():
    server = ParameterServer(num_workers=1, done_grace_s=0.3).start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ParameterServerStub(channel)
            stub.RegisterWorker(pb.WorkerRequest(task_index=0), timeout=TIMEOUT)
            stub.WorkerDone(pb.WorkerRequest(task_index=0), timeout=TIMEOUT)
            stub.RegisterWorker(pb.WorkerRequest(task_index=0), timeout=TIMEOUT)  # restarted
            assert not server.wait_for_termination(2.0), "the server exited under a worker"
            stub.WorkerDone(pb.WorkerRequest(task_index=0), timeout=TIMEOUT)
        assert server.wait_for_termination(10.0)
        assert server.stop_reason == "all workers are done"
    finally:
        server.stop(grace=0)


def test_without_a_token_only_loopback_unless_insecure(caplog):
    with pytest.raises(ValueError, match="refusing to serve on 0.0.0.0 without a job token"):
        ParameterServer(host="0.0.0.0", token="")
    ParameterServer(host="0.0.0.0", token="", insecure=True)  # told so: allowed
    ParameterServer(host="0.0.0.0", token="secret")
    import logging
    with caplog.at_level(logging.WARNING), ParameterServer(token="") as ps:
        assert f"anyone who reaches {ps.address} may call it" in caplog.text


def test_the_ps_command_refuses_a_public_address_without_a_token():
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "PSFLOW_AUTH_TOKEN"}
    result = subprocess.run([sys.executable, "-m", "psflow.ps", "--task-index", "0",
                             "--num-workers", "1", "--host", "0.0.0.0"],
                            capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 2
    assert "without a job token" in result.stderr and "--insecure" in result.stderr


def test_what_the_fuzzer_found_is_invalid_argument(stub):
    request = pb.PushRequest(rule=SGD)
    request.gradients.add(name="w", values=pb.Tensor(dtype="float32", shape=[0, 2**62, 8]))
    code, details = code_of(lambda: stub.Push(request, timeout=TIMEOUT))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "too large" in details
    code, _ = code_of(lambda: stub.SaveShard(pb.SaveShardRequest(path="/tmp/a\0b.npz"),
                                             timeout=TIMEOUT))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    # A float64 gradient beyond float32 would turn the variable to Inf once cast.
    code, details = code_of(lambda: push(stub, np.full((2, 3), 1e300)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "beyond float32" in details
    np.testing.assert_array_equal(value_of(stub), np.ones((2, 3)))
