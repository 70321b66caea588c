"""The same-host lane (psflow.transport.lane): a worker's Pull, PullRows and Push reach a shard on
its host through a local socket, with gRPC's messages, answers and errors; a wrong token or a
malformed frame ends only that connection; a shard that dies leaves nothing behind and the
worker's calls go back to gRPC; with PSFLOW_LANE=0 jobs train through gRPC alone."""

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from psflow.errors import NotFoundError, PsflowError
from psflow.proto import codec, wire
from psflow.proto import psflow_pb2 as pb
from psflow.ps.shard_server import ParameterServer
from psflow.transport import lane
from psflow.worker.client import ShardClient, worker_request

TOKEN = "lane-test-token"
ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "cluster_scripts"
SGD = pb.UpdateRule(name="sgd", hyper={"learning_rate": 0.5})


@pytest.fixture
def server():
    ps = ParameterServer(shard=0, num_workers=1, port=0, token=TOKEN).start()
    yield ps
    ps.stop(grace=0)


def registered(address, token=TOKEN):
    client = ShardClient(0, address, token=token)
    client.call("RegisterWorker", worker_request(0))
    return client


def no_grpc_for_steps(client):
    """Makes the client's gRPC Pull and Push fail, so what answers came through the lane."""
    def refuse(*args, **kwargs):
        raise AssertionError("a step's call went through gRPC")
    client._pull = client._pull_rows = refuse
    client._raw = lambda method: refuse


def declare_w(client):
    client.call("DeclareVariables", pb.DeclareVariablesRequest(variables=[
        pb.VariableSpec(name="w", dtype="float32", shape=(2, 3))]))
    request = pb.InitializeVariablesRequest()
    codec.encode(np.ones((2, 3), np.float32), request.values.add(name="w").tensor)
    client.call("InitializeVariables", request)


def push(client, gradient, pull=("w",)):
    request = wire.PushBuilder(worker=0, global_step=0, increment_global_step=True)
    request.rule.CopyFrom(SGD)
    request.add_gradient("w", 0, gradient)
    request.pull.extend(pull)
    return client.call("Push", request)


def test_a_registered_worker_trains_through_the_lane_as_through_grpc(server, monkeypatch):
    client = registered(server.address)
    assert client.lane is not None and client.lane.name.startswith("psflow-ps0-")
    declare_w(client)
    no_grpc_for_steps(client)
    gradient = np.arange(6, dtype=np.float32).reshape(2, 3)
    reply = push(client, gradient)
    expected = np.ones((2, 3), np.float32) - 0.5 * gradient
    assert reply.global_step == 1
    np.testing.assert_array_equal(reply.values[0].array, expected)
    pulled = client.call("Pull", pb.PullRequest(names=["w"]))
    np.testing.assert_array_equal(pulled.values[0].array, expected)
    assert client.sent > 24 and client.received > 48
    # The same shard, through gRPC: the same values.
    monkeypatch.setenv("PSFLOW_LANE", "0")
    plain = registered(server.address)
    assert plain.lane is None
    again = plain.call("Pull", pb.PullRequest(names=["w"]))
    np.testing.assert_array_equal(again.values[0].array, expected)
    assert again.global_step == 1
    client.close()
    plain.close()


def test_errors_come_back_as_through_grpc_and_the_lane_keeps_serving(server, monkeypatch):
    client = registered(server.address)
    declare_w(client)
    with pytest.raises(NotFoundError) as through_lane:
        client.call("Pull", pb.PullRequest(names=["nope"]))
    assert client.lane is not None and not client.lane.broken
    monkeypatch.setenv("PSFLOW_LANE", "0")
    plain = registered(server.address)
    with pytest.raises(NotFoundError) as through_grpc:
        plain.call("Pull", pb.PullRequest(names=["nope"]))
    assert str(through_lane.value) == str(through_grpc.value)
    assert "NOT_FOUND" in str(through_lane.value) and "nope" in str(through_lane.value)
    pulled = client.call("Pull", pb.PullRequest(names=["w"]))
    np.testing.assert_array_equal(pulled.values[0].array, np.ones((2, 3)))
    client.close()
    plain.close()


def test_a_wrong_token_is_refused_and_others_are_served(server):
    client = registered(server.address)
    with pytest.raises(lane.LaneError, match="token") as refused:
        lane.LaneClient(client.lane.name, "another token")
    assert refused.value.code.name == "UNAUTHENTICATED"
    declare_w(client)
    assert client.call("Pull", pb.PullRequest(names=["w"])).values[0].array.shape == (2, 3)
    client.close()


def raw_connection(name, hello=True):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect("\0" + name)
    if hello:
        token = TOKEN.encode()
        sock.sendall(lane.MAGIC + len(token).to_bytes(4, "little") + token)
        assert sock.recv(9) == bytes(9)  # status OK, no body
    return sock


def closed_by_the_server(sock):
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:  # closed with the frame's bytes unread
        return True


@pytest.mark.parametrize("frame", [
    b"not the lane's magic at all\n",                       # no hello
    bytes([200]) + (4).to_bytes(8, "little") + b"abcd",    # no such method
    bytes([0]) + (1 << 62).to_bytes(8, "little"),           # a length past any message
])
def test_a_malformed_connection_is_closed_and_the_server_serves_on(server, frame):
    client = registered(server.address)
    declare_w(client)
    sock = raw_connection(client.lane.name, hello=not frame.startswith(b"not"))
    sock.sendall(frame)
    assert closed_by_the_server(sock)
    sock.close()
    assert client.call("Pull", pb.PullRequest(names=["w"])).values[0].array.shape == (2, 3)
    client.close()


def test_a_malformed_message_gets_invalid_argument_on_the_same_connection(server):
    client = registered(server.address)
    declare_w(client)
    sock = raw_connection(client.lane.name)
    garbage = b"\xff\xff\xff"
    sock.sendall(bytes([lane.METHODS.index("Push")]) + len(garbage).to_bytes(8, "little")
                 + garbage)
    reply = sock.recv(1000)
    assert reply[0] == 3  # INVALID_ARGUMENT, and the server's text
    assert b"truncated message" in reply[9:]
    sock.sendall(bytes([lane.METHODS.index("Pull")]) + (0).to_bytes(8, "little"))
    assert sock.recv(1000)[0] == 0  # the same connection serves on
    sock.close()
    client.close()


def lane_names():
    """The abstract Unix socket names bound on this host (in this network namespace)."""
    return {line.split()[-1][1:] for line in Path("/proc/net/unix").read_text().splitlines()[1:]
            if line.split()[-1].startswith("@")}


@pytest.mark.cluster  # a server process's life and death, seconds long
def test_a_killed_shard_leaves_no_socket_and_the_worker_falls_back_to_grpc(tmp_path):
    port_file = tmp_path / "ps.port"
    process = subprocess.Popen([sys.executable, "-m", "psflow.ps", "--task-index", "0",
                                "--num-workers", "1", "--port", "0", "--port-file", str(port_file)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        client = registered(f"127.0.0.1:{int(port_file.read_text())}", token=None)
        name = client.lane.name
        assert name in lane_names()
        declare_w(client)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        assert name not in lane_names()
        client.timeout = 2
        with pytest.raises(PsflowError, match="UNAVAILABLE|DEADLINE_EXCEEDED"):
            client.call("Pull", pb.PullRequest(names=["w"]))
        assert client.lane is None
        client.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def launch(*args, env=None):
    import os
    return subprocess.run([sys.executable, "-m", "psflow.launcher", "--no-progress",
                           *map(str, args)], capture_output=True, text=True, timeout=180,
                          cwd=ROOT, env={**os.environ, **(env or {})})


@pytest.mark.cluster
@pytest.mark.parametrize("lane_setting", ["1", "0"])
def test_no_update_is_lost_with_and_without_the_lane(tmp_path, lane_setting):
    out = tmp_path / "result.json"
    result = launch("--workers", "4", "--ps", "2", SCRIPTS / "constant_pushes.py", out,
                    env={"PSFLOW_LANE": lane_setting})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    final = json.loads(out.read_text())
    assert final["step"] == 4 * 200
    assert final["v"] == [-800.0] * 4


def test_large_messages_go_through_shared_memory_and_train_exactly(server, monkeypatch):
    client = registered(server.address)
    client.call("DeclareVariables", pb.DeclareVariablesRequest(variables=[
        pb.VariableSpec(name="w", dtype="float32", shape=(300, 300))]))
    request = pb.InitializeVariablesRequest()
    codec.encode(np.ones((300, 300), np.float32), request.values.add(name="w").tensor)
    client.call("InitializeVariables", request)
    no_grpc_for_steps(client)
    copied = []
    copy_into = lane._copy_into
    monkeypatch.setattr(lane, "_copy_into", lambda region, pieces: (
        copied.append(sum(len(p) for p in pieces)), copy_into(region, pieces)))
    expected = np.ones((300, 300), np.float32)
    rng = np.random.default_rng(0)
    for _ in range(5):
        gradient = rng.integers(-4, 4, size=(300, 300)).astype(np.float32)
        reply = push(client, gradient)
        expected -= 0.5 * gradient
        np.testing.assert_array_equal(reply.values[0].array, expected)
    # Every request and every reply went through the regions; the worker's copy of a reply
    # is its own, not a view of the region the next reply is written over.
    assert len(copied) == 10 and min(copied) > 300 * 300 * 4
    assert not lane.in_shared_memory(reply.values[0].array)
    # The regions grew to the largest message and stayed: one for requests, one for replies.
    assert [len(region) >= 300 * 300 * 4 for region in client.lane._regions] == [True, True]
    pulled = client.call("Pull", pb.PullRequest(names=["w"]))  # a large reply, too
    np.testing.assert_array_equal(pulled.values[0].array, expected)
    assert len(copied) == 11


def test_a_reply_larger_than_the_region_comes_through_the_socket_then_the_region_grows(
        server, monkeypatch):
    client = registered(server.address)
    client.call("DeclareVariables", pb.DeclareVariablesRequest(variables=[
        pb.VariableSpec(name="w", dtype="float32", shape=(300, 300)),
        pb.VariableSpec(name="v", dtype="float32", shape=(600, 600))]))
    request = pb.InitializeVariablesRequest()
    for name, shape in (("w", (300, 300)), ("v", (600, 600))):
        codec.encode(np.full(shape, 2, np.float32), request.values.add(name=name).tensor)
    client.call("InitializeVariables", request)
    no_grpc_for_steps(client)
    gradient = np.ones((300, 300), np.float32)
    for expected in (1.5, 1.0):  # the reply also carries v: four times the request
        reply = push(client, gradient, pull=("w", "v"))
        by_name = {v.name: v.array for v in reply.values}
        assert (by_name["w"] == expected).all() and (by_name["v"] == 2).all()
    request_region, reply_region = client.lane._regions
    assert len(reply_region) >= 600 * 600 * 4 > len(request_region) // 2


@pytest.mark.cluster
@pytest.mark.parametrize("ps", [1, 2])
def test_sync_steps_of_large_gradients_through_shared_memory_are_exact(tmp_path, ps):
    out = tmp_path / "result.json"
    result = launch("--workers", "2", "--ps", ps, "--mode", "sync",
                    SCRIPTS / "large_steps.py", out)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    final = json.loads(out.read_text())
    assert final["step"] == 30
    assert final["a"] == final["b"] == [-sum(range(1, 31)) / 1024]
