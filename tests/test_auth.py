"""The job token: a parameter server given one refuses every call without it (or with another
one) with UNAUTHENTICATED and changes nothing; health checks stay open for probes."""

import shutil
import subprocess

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb
from psflow.proto import psflow_pb2_grpc as pb_grpc
from psflow.ps.shard_server import ParameterServer
from psflow.transport import auth

TOKEN = "s3cret-token"


@pytest.fixture
def server():
    ps = ParameterServer(shard=0, num_workers=1, token=TOKEN).start()
    yield ps
    ps.stop(grace=0)


@pytest.fixture
def stub(server):
    channel = grpc.insecure_channel(server.address, options=codec.CHANNEL_OPTIONS)
    yield pb_grpc.ParameterServerStub(channel)
    channel.close()


def good():
    return auth.call_metadata(TOKEN)


def declare_and_initialize(stub):
    stub.DeclareVariables(pb.DeclareVariablesRequest(variables=[
        pb.VariableSpec(name="w", dtype="float32", shape=[3])]), metadata=good(), timeout=10)
    init = pb.InitializeVariablesRequest()
    codec.encode(np.ones(3, np.float32), init.values.add(name="w").tensor)
    stub.InitializeVariables(init, metadata=good(), timeout=10)


def push(values):
    request = pb.PushRequest(rule=pb.UpdateRule(name="sgd", hyper={"learning_rate": 1.0}),
                             increment_global_step=True)
    codec.encode(values, request.gradients.add(name="w").values)
    return request


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer wrong"),),
                                      (("authorization", TOKEN),)],
                         ids=["none", "wrong", "not bearer"])
def test_calls_without_the_token_are_refused_and_change_nothing(stub, server, metadata):
    declare_and_initialize(stub)
    calls = [lambda: stub.Push(push(np.full(3, 5, np.float32)), metadata=metadata, timeout=10),
             lambda: stub.Pull(pb.PullRequest(names=["w"]), metadata=metadata, timeout=10),
             lambda: stub.WorkerDone(pb.WorkerRequest(task_index=0), metadata=metadata,
                                     timeout=10),
             lambda: stub.GetStats(pb.StatsRequest(), metadata=metadata, timeout=10)]
    for call in calls:
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "token" in info.value.details()
    reply = stub.Pull(pb.PullRequest(names=["w"]), metadata=good(), timeout=10)
    np.testing.assert_array_equal(codec.decode(reply.values[0].tensor), np.ones(3))
    assert reply.global_step == 0 and not server.store.all_done.is_set()


def test_the_token_lets_calls_through(stub):
    declare_and_initialize(stub)
    reply = stub.Push(push(np.full(3, 0.5, np.float32)), metadata=good(), timeout=10)
    assert reply.global_step == 1


def test_health_checks_need_no_token(server):
    channel = grpc.insecure_channel(server.address)
    health = health_pb2_grpc.HealthStub(channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service="psflow.ParameterServer"),
                         timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    channel.close()


def test_workers_send_the_token_from_the_environment(server, monkeypatch):
    from psflow.worker.client import ShardClient
    monkeypatch.setenv(auth.TOKEN_ENV, TOKEN)
    client = ShardClient(0, server.address)
    assert client.call("GetStats", pb.StatsRequest()).shard == 0
    client.close()
    monkeypatch.setenv(auth.TOKEN_ENV, "another")
    client = ShardClient(0, server.address)
    from psflow.errors import UnauthenticatedError
    with pytest.raises(UnauthenticatedError, match="UNAUTHENTICATED"):
        client.call("GetStats", pb.StatsRequest(), timeout=5)
    client.close()


def make_certificates(folder):
    """A CA and a server certificate for localhost signed by it (openssl)."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=psflow test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "tls.key", "-out", "tls.csr",
        "-subj", "/CN=localhost")
    (folder / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "tls.crt", "-days", "2", "-extfile", "san.ext")
    return {auth.TLS_CERT_ENV: str(folder / "tls.crt"), auth.TLS_KEY_ENV: str(folder / "tls.key"),
            auth.TLS_CA_ENV: str(folder / "ca.crt")}


@pytest.mark.cluster
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make certificates")
def test_tls_from_certificate_files(tmp_path, monkeypatch):
    from psflow.errors import UnavailableError
    from psflow.worker.client import ShardClient
    env = make_certificates(tmp_path)
    server = ParameterServer(shard=0, num_workers=1, token=TOKEN,
                             credentials=auth.server_credentials(env)).start()
    try:
        monkeypatch.setenv(auth.TOKEN_ENV, TOKEN)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        client = ShardClient(0, f"localhost:{server.port}")
        assert client.call("GetStats", pb.StatsRequest(), timeout=10).shard == 0
        client.close()
        # A client that does not speak TLS gets nowhere.
        monkeypatch.delenv(auth.TLS_CA_ENV)
        plain = ShardClient(0, f"localhost:{server.port}")
        with pytest.raises(UnavailableError):
            plain.call("GetStats", pb.StatsRequest(), timeout=3, wait_for_ready=False)
        plain.close()
    finally:
        server.stop(grace=0)


def test_tls_needs_both_the_certificate_and_the_key(tmp_path):
    with pytest.raises(ValueError, match="needs both"):
        auth.server_credentials({auth.TLS_CERT_ENV: str(tmp_path / "tls.crt")})
    with pytest.raises(ValueError, match="cannot read the TLS key .*none.key"):
        auth.server_credentials({auth.TLS_CERT_ENV: str(tmp_path / "none.crt"),
                                 auth.TLS_KEY_ENV: str(tmp_path / "none.key")})


def test_a_local_jobs_token_is_found_by_its_servers_or_its_serving_tier(tmp_path):
    import json

    from psflow.transport.auth import JOB_FILE, JOB_FOLDER_PREFIX, local_job_token
    job = tmp_path / f"{JOB_FOLDER_PREFIX}123-abc"
    job.mkdir()
    (job / JOB_FILE).write_text(json.dumps({"ps": ["127.0.0.1:1", "127.0.0.1:2"],
                                            "token": "t0k", "params": [["127.0.0.1:7"]]}))
    broken = tmp_path / f"{JOB_FOLDER_PREFIX}124-def"
    broken.mkdir()
    (broken / JOB_FILE).write_text("{not json")
    assert local_job_token(["127.0.0.1:2"], tmp_path) == "t0k"
    assert local_job_token(["elsewhere:1", "127.0.0.1:7"], tmp_path) == "t0k"
    assert local_job_token(["127.0.0.1:9"], tmp_path) is None
    assert local_job_token(["127.0.0.1:1"], tmp_path / "missing") is None
