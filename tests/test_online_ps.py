"""The parameter server's side of online training: shard 0 keeps the input positions pushes
carry, hands them out, writes them with its checkpoint file and takes them back on a restore;
a bad position is INVALID_ARGUMENT and the server serves on; an `--online` server keeps
serving when every worker is done, and on SIGTERM serves until the workers at work are done,
then exits 0."""

import signal
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest

from psflow import checkpoint
from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb
from psflow.proto import psflow_pb2_grpc as pb_grpc
from psflow.ps.shard_server import ParameterServer
from psflow.train.saver import read_input_positions

SGD = pb.UpdateRule(name="sgd", hyper={"learning_rate": 1.0})
TIMEOUT = 30


@pytest.fixture
def server(tmp_path):
    ps = ParameterServer(shard=0, num_workers=2, port=0,
                         checkpoint_root=str(tmp_path)).start()
    yield ps
    ps.stop(grace=0)


@pytest.fixture
def stub(channel):
    stub = pb_grpc.ParameterServerStub(channel)
    stub.DeclareVariables(pb.DeclareVariablesRequest(variables=[
        pb.VariableSpec(name="w", dtype="float32", shape=[3])]), timeout=TIMEOUT)
    request = pb.InitializeVariablesRequest()
    codec.encode(np.zeros(3, np.float32), request.values.add(name="w").tensor)
    stub.InitializeVariables(request, timeout=TIMEOUT)
    return stub


def push(stub, *positions, worker=0):
    request = pb.PushRequest(worker=worker, rule=SGD, increment_global_step=True)
    gradient = request.gradients.add(name="w")
    codec.encode(np.ones(3, np.float32), gradient.values)
    for dataset, shard, num_shards, file, lines in positions:
        request.input_positions.add(dataset=dataset, shard=shard, num_shards=num_shards,
                                    file=file, lines=lines)
    return stub.Push(request, timeout=TIMEOUT)


def positions(stub):
    reply = stub.GetInputPositions(pb.InputPositionsRequest(), timeout=TIMEOUT)
    return [(p.dataset, p.shard, p.num_shards, p.file, p.lines) for p in reply.positions]


def test_pushes_carry_positions_that_shard_0_keeps_per_share(stub):
    assert positions(stub) == []
    push(stub, ("/logs", 0, 2, "f-001", 10))
    push(stub, ("/logs", 1, 2, "f-000", 3), worker=1)
    push(stub)  # a push that moved no position changes none
    push(stub, ("/logs", 0, 2, "f-004", 2))
    assert positions(stub) == [("/logs", 0, 2, "f-004", 2), ("/logs", 1, 2, "f-000", 3)]


@pytest.mark.parametrize("bad,words", [
    (("", 0, 1, "f", 1), "dataset name"),
    (("/logs", 2, 2, "f", 1), "shard 2 is out of range for 2 shards"),
    (("/logs", 0, 1, "../f", 1), "not a file name"),
    (("/logs", 0, 1, "f", -4), "-4 lines"),
])
def test_a_bad_position_is_invalid_argument_and_the_server_serves_on(stub, bad, words):
    with pytest.raises(grpc.RpcError) as caught:
        push(stub, bad)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in caught.value.details()
    push(stub, ("/logs", 0, 1, "f", 1))
    assert positions(stub) == [("/logs", 0, 1, "f", 1)]


def test_save_shard_returns_the_positions_and_a_restore_replaces_them(stub, tmp_path):
    push(stub, ("/logs", 0, 1, "f-002", 7))
    reply = stub.SaveShard(pb.SaveShardRequest(path=str(tmp_path / "shard-0.npz")),
                           timeout=TIMEOUT)
    saved = [(p.dataset, p.shard, p.num_shards, p.file, p.lines) for p in reply.input_positions]
    assert saved == [("/logs", 0, 1, "f-002", 7)]
    # the index keeps them, and reads them back
    checkpoint.write_index(str(tmp_path), 1, [], {}, saved)
    assert read_input_positions(str(tmp_path)) == saved
    push(stub, ("/logs", 0, 1, "f-009", 1))
    request = pb.InitializeVariablesRequest(set_global_step=True, global_step=1)
    request.input_positions.add(dataset="/logs", shard=0, num_shards=1, file="f-002", lines=7)
    stub.InitializeVariables(request, timeout=TIMEOUT)
    assert positions(stub) == saved
    stub.InitializeVariables(pb.InitializeVariablesRequest(set_global_step=True, global_step=0),
                             timeout=TIMEOUT)
    assert positions(stub) == []  # a checkpoint without positions: none


def test_malformed_positions_in_an_index_are_data_loss(tmp_path):
    checkpoint.write_index(str(tmp_path), 1, [], {}, [("/logs", 0, 1, "f", 2)])
    index = (tmp_path / checkpoint.INDEX).read_text().replace('"lines": 2', '"lines": "2"')
    (tmp_path / checkpoint.INDEX).write_text(index)
    with pytest.raises(checkpoint.DataLossError, match="malformed input positions"):
        read_input_positions(str(tmp_path))


@pytest.mark.cluster  # a server process's life and death, seconds long
def test_an_online_server_outlives_its_workers_and_exits_0_on_sigterm(tmp_path):
    port_file = tmp_path / "ps.port"
    process = subprocess.Popen(
        [sys.executable, "-m", "psflow.ps", "--task-index", "0", "--num-workers", "1",
         "--port", "0", "--port-file", str(port_file), "--online"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        with grpc.insecure_channel(f"127.0.0.1:{int(port_file.read_text())}") as ch:
            stub = pb_grpc.ParameterServerStub(ch)
            stub.RegisterWorker(pb.WorkerRequest(task_index=0), timeout=TIMEOUT)
            assert stub.WorkerDone(pb.WorkerRequest(task_index=0), timeout=TIMEOUT).done == 1
            time.sleep(1.5)
            assert process.poll() is None  # every worker is done, and it serves on
            stub.RegisterWorker(pb.WorkerRequest(task_index=0), timeout=TIMEOUT)
            # Stopped while a worker is at work, it serves until the worker is done.
            process.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            assert process.poll() is None
            stub.GetStats(pb.StatsRequest(), timeout=TIMEOUT)
            stub.WorkerDone(pb.WorkerRequest(task_index=0), timeout=TIMEOUT)
            started = time.monotonic()
        _, err = process.communicate(timeout=10)
        assert process.returncode == 0, err
        assert time.monotonic() - started < 2.0
        assert "serving until the workers at work end" in err and "SIGTERM" in err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
