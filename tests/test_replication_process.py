"""A replica process killed where PSFLOW_FAULT names it: the head is told the write failed,
and serves on as a chain of one once that chain is installed."""

import os
import subprocess
import sys
import time

import grpc
import pytest

from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb
from psflow.proto import psflow_pb2_grpc as pb_grpc
from psflow.ps.shard_server import ParameterServer

TIMEOUT = 30
DECLARE = pb.DeclareVariablesRequest(variables=[pb.VariableSpec(name="w", dtype="float32",
                                                                shape=[2])])


def start_replica(tmp_path, fault):
    port_file = tmp_path / "tail.port"
    process = subprocess.Popen(
        [sys.executable, "-m", "psflow.ps", "--task-index", "0", "--num-workers", "1",
         "--port", "0", "--port-file", str(port_file)],
        env=dict(os.environ, PSFLOW_FAULT=fault), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not port_file.exists():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "the replica wrote no port file"
        time.sleep(0.05)
    return process, f"127.0.0.1:{int(port_file.read_text())}"


@pytest.mark.cluster  # a replica process's death, a second or two
def test_a_tail_killed_before_applying_fails_the_write_and_the_head_serves_on(tmp_path):
    process, tail = start_replica(tmp_path, "kill:before-apply:0:1")
    head = ParameterServer(shard=0, num_workers=1).start()
    try:
        replicas = [head.address, tail]
        with grpc.insecure_channel(tail, options=codec.CHANNEL_OPTIONS) as channel:
            pb_grpc.ParameterServerStub(channel).InstallChain(
                pb.ChainConfig(epoch=1, replicas=replicas, index=1), timeout=TIMEOUT)
        with grpc.insecure_channel(head.address, options=codec.CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.ParameterServerStub(channel)
            stub.InstallChain(pb.ChainConfig(epoch=1, replicas=replicas, index=0),
                              timeout=TIMEOUT)
            with pytest.raises(grpc.RpcError) as info:
                stub.DeclareVariables(DECLARE, timeout=TIMEOUT)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert tail in info.value.details()
            assert process.wait(timeout=TIMEOUT) == 137
            assert "before-apply" in process.stderr.read()
            stub.InstallChain(pb.ChainConfig(epoch=2, replicas=[head.address], index=0),
                              timeout=TIMEOUT)
            stub.DeclareVariables(DECLARE, timeout=TIMEOUT)
            assert head.servicer.replication.unacked() == []
    finally:
        head.stop(grace=0)
        if process.poll() is None:
            process.kill()
        process.wait()
