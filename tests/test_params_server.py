"""psflow-params (serving/params_server.py): a mirror of one training shard that answers reads
as the shard would; predict servers read a tier of them with serving.remote_params. Real
parameter servers and params servers on 127.0.0.1."""

import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb
from psflow.proto import psflow_pb2_grpc as pb_grpc
from psflow.ps.shard_server import ParameterServer
from psflow.serving.params_server import SERVICE, ParamsServer
from psflow.serving.remote_params import RemoteParams
from psflow.worker.client import ShardClient
from test_remote_params import set_rows, set_variable

TIMEOUT = 20


@pytest.fixture
def tier():
    """Two training shards, and a params server following each."""
    servers = [ParameterServer(shard=i, num_workers=1, port=0, publish_period=0.02,
                               dense_period=0.05).start() for i in range(2)]
    clients = [ShardClient(i, f"127.0.0.1:{s.port}", token="") for i, s in enumerate(servers)]
    for client in clients:
        client.call("DeclareVariables", pb.DeclareVariablesRequest(tables=[pb.TableSpec(
            name="items", dim=3, dtype="float32", initializer="zeros")]))
    params = [ParamsServer(f"127.0.0.1:{s.port}", host="127.0.0.1", port=0, token="").start()
              for s in servers]
    yield clients, params
    for server in params:
        server.stop(grace=0)
    for server in servers:
        server.stop(grace=0)


def until(check, what):
    deadline = time.monotonic() + TIMEOUT
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_a_tier_answers_rows_and_variables_as_the_training_shards(tier):
    clients, params = tier
    keys = np.arange(1, 30, dtype=np.int64)
    rows = np.arange(keys.size * 3, dtype=np.float32).reshape(-1, 3)
    set_rows(clients, keys, rows, table="items")
    set_variable(clients[0], "big/part_0", np.ones((2, 2)))
    set_variable(clients[1], "big/part_1", np.full((1, 2), 2.0))
    for server in params:
        until(server.follower.wait_synced, "the params server's snapshot")
    remote = RemoteParams([[f"127.0.0.1:{p.port}"] for p in params], cache_ttl=0,
                          dense_period=0.05)
    try:
        until(lambda: np.array_equal(remote.lookup("items", keys), rows), "the rows")
        assert not remote.lookup("items", np.array([999])).any()
        assert remote.lookup("nothing", np.array([1])) is None
        # (the variables reach the tier with the shards' next dense values)
        until(lambda: remote.dense("big") is not None, "the variable's parts")
        assert remote.dense("big").tolist() == [[1, 1], [1, 1], [2, 2]]
        set_rows(clients, keys[:1], rows[:1], table="items")  # row of key 1 doubled
        until(lambda: np.array_equal(remote.lookup("items", keys[:1]), 2 * rows[:1]),
              "the changed row")
    finally:
        remote.close()


def test_a_params_server_refuses_writes_and_bad_requests_and_is_ready_once_synced(tier):
    clients, params = tier
    channel = grpc.insecure_channel(f"127.0.0.1:{params[0].port}")
    try:
        until(lambda: health(channel) == health_pb2.HealthCheckResponse.SERVING, "readiness")
        stub = pb_grpc.ParameterServerStub(channel)
        write = pb.PullRowsRequest()
        codec.encode(np.array([1], np.int64), write.keys.add(name="items", train=True).keys)
        with pytest.raises(grpc.RpcError) as caught:
            stub.PullRows(write, timeout=TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "takes no writes" in caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:
            stub.Pull(pb.PullRequest(names=["nothing"]), timeout=TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as caught:
            stub.Push(pb.PushRequest(), timeout=TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        raw = channel.unary_unary(f"/{SERVICE}/Pull")
        with pytest.raises(grpc.RpcError) as caught:
            raw(b"\xff\xff", timeout=TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        read = pb.PullRowsRequest()
        codec.encode(np.array([1], np.int64), read.keys.add(name="items").keys)
        assert stub.PullRows(read, timeout=TIMEOUT).values[0].name == "items"  # serves on
    finally:
        channel.close()


def health(channel):
    return health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=SERVICE), timeout=TIMEOUT).status


def test_a_params_server_is_not_ready_before_its_first_snapshot():
    server = ParamsServer("127.0.0.1:1", host="127.0.0.1", port=0, token="").start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        assert health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc.ParameterServerStub(channel).Pull(pb.PullRequest(names=["w"]),
                                                       timeout=TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        channel.close()
        server.stop(grace=0)


@pytest.mark.cluster  # a server process started and stopped
def test_the_psflow_params_process_serves_a_shard_and_exits_0_on_sigterm(tier):
    import os
    import signal
    import subprocess
    import sys

    from test_remote_params import free_port
    clients, params = tier
    set_variable(clients[0], "w", np.arange(4.0).reshape(2, 2))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PSFLOW_AUTH_TOKEN"}
    process = subprocess.Popen(
        [sys.executable, "-m", "psflow.serving.params_server",
         f"--follow={params[0].follower.address}", "--host=127.0.0.1", f"--port={port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
        until(lambda: health(channel) == health_pb2.HealthCheckResponse.SERVING, "readiness")
        reply = pb_grpc.ParameterServerStub(channel).Pull(pb.PullRequest(names=["w"]),
                                                           timeout=TIMEOUT)
        assert codec.decode(reply.values[0].tensor).tolist() == [[0, 1], [2, 3]]
        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT) == 0
    finally:
        channel.close()
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.cluster  # a concurrency or timing run
def test_a_dead_training_shard_leaves_the_tier_answering_with_its_last_state():
    server = ParameterServer(shard=0, num_workers=1, port=0, publish_period=0.02).start()
    client = ShardClient(0, f"127.0.0.1:{server.port}", token="")
    client.call("DeclareVariables", pb.DeclareVariablesRequest(tables=[pb.TableSpec(
        name="items", dim=3, dtype="float32", initializer="zeros")]))
    params = ParamsServer(f"127.0.0.1:{server.port}", host="127.0.0.1", port=0,
                          token="").start()
    remote = RemoteParams([[f"127.0.0.1:{params.port}"]], cache_ttl=0)
    try:
        keys = np.array([4, 8, 15], np.int64)
        rows = np.arange(9, dtype=np.float32).reshape(3, 3)
        set_rows([client], keys, rows, table="items")
        until(lambda: np.array_equal(remote.lookup("items", keys), rows), "the rows")
        server.stop(grace=0)  # training fails; serving goes on with what it had
        for _ in range(5):
            np.testing.assert_array_equal(remote.lookup("items", keys), rows)
            time.sleep(0.1)
        assert params.follower.last_error is not None  # it noticed, and keeps trying
    finally:
        remote.close()
        params.stop(grace=0)
        server.stop(grace=0)
