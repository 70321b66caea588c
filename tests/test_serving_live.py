"""psflow-serve as a real process reading live parameters: its versions' table rows and
variables come from the training job's parameter servers, either through mirrors kept in the
server (--follow: the servers' parameter stream) or read at request time (--params_shard: here
from training parameter servers, which answer the same reads as psflow-params); a change
there is in the answers within a publish (or dense poll) period."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from rest_calls import rest

import psflow as tf
from psflow.proto import psflow_pb2 as pb
from psflow.ps.shard_server import ParameterServer
from psflow.worker.client import ShardClient
from test_remote_params import free_port, set_rows, set_variable
from test_saved_model import ctr, ctr_feeds, serving_inputs, trained
from waiting import wait_for

pytestmark = pytest.mark.cluster
TESTS = pathlib.Path(__file__).resolve().parent
EMBEDDING = 4


def by_hand(row, w, b):
    return 1 / (1 + np.exp(-(np.concatenate([row, row]) @ w[:, 0] + b[0])))


def predict(port, users):
    body = {"inputs": {"multi_indices": [[r, 0] for r in range(len(users))],
                       "multi_values": users, "multi_shape": [len(users), 1], "user": users}}
    status, answer = rest(port, "/v1/models/ctr:predict", body)
    assert status == 200, answer
    return {k: np.asarray(v) for k, v in answer["outputs"].items()}


def live_flags(mode, servers):
    addresses = [f"127.0.0.1:{s.port}" for s in servers]
    if mode == "follow":
        return ["--follow=" + ",".join(addresses)]
    return ["--params_cache_ttl_ms=0", "--dense_poll_seconds=0.1"] + [
        f"--params_shard={a}" for a in addresses]


@pytest.mark.parametrize("mode", ["follow", "params_shard"])
def test_a_served_version_reads_the_training_jobs_rows_and_variables(tmp_path, mode):
    _, sess, inputs, outputs = trained(ctr, ctr_feeds, steps=2)
    tf.saved_model.simple_save(sess, str(tmp_path / "ctr" / "1"), serving_inputs(inputs),
                               outputs)
    servers = [ParameterServer(shard=i, num_workers=1, port=0, publish_period=0.05,
                               dense_period=0.1).start() for i in range(2)]
    clients = [ShardClient(i, f"127.0.0.1:{s.port}", token="") for i, s in enumerate(servers)]
    rest_port = free_port()
    process = None
    try:
        for client in clients:
            client.call("DeclareVariables", pb.DeclareVariablesRequest(tables=[pb.TableSpec(
                name="features", dim=EMBEDDING, dtype="float32", initializer="zeros")]))
        keys = np.arange(1, 20, dtype=np.int64)
        rows = np.linspace(-1, 1, keys.size * EMBEDDING, dtype=np.float32).reshape(-1, EMBEDDING)
        set_rows(clients, keys, rows, table="features")
        w = np.linspace(-0.5, 0.5, 2 * EMBEDDING).reshape(-1, 1)
        set_variable(clients[1], "tower/w", w)
        set_variable(clients[0], "tower/b", np.array([0.3]))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(TESTS), os.environ.get("PYTHONPATH", "")]))
        env.pop("PSFLOW_AUTH_TOKEN", None)
        process = subprocess.Popen(
            [sys.executable, "-m", "psflow.serving", f"--port={free_port()}",
             f"--rest_api_port={rest_port}", "--model_name=ctr",
             f"--model_base_path={tmp_path / 'ctr'}", *live_flags(mode, servers)],
            stdout=open(tmp_path / "serve.log", "w"), stderr=subprocess.STDOUT, env=env)
        wait_for(lambda: _serving(rest_port), 60, "psflow-serve to serve version 1")

        def answers(row, b):
            got = predict(rest_port, [3, 1000])
            return (np.allclose(got["user_embedding"], [row, np.zeros(EMBEDDING)], atol=1e-6)
                    and abs(got["ctr"][0] - by_hand(row, w, b)) < 1e-5)
        wait_for(lambda: answers(rows[2], [0.3]), 20, "the job's rows in the answers")
        set_rows(clients, keys[2:3], rows[2:3], table="features")  # row 3 now twice its value
        set_variable(clients[0], "tower/b", np.array([-2.0]), declare_it=False)
        if mode == "params_shard":  # read at request time: in the very next answer
            np.testing.assert_allclose(predict(rest_port, [3])["user_embedding"][0],
                                       2 * rows[2], atol=1e-6)
        wait_for(lambda: answers(2 * rows[2], [-2.0]), 10, "the new row and variable")
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
        for server in servers:
            server.stop(grace=0)


def _serving(port):
    try:
        status, body = rest(port, "/v1/models/ctr")
    except OSError:
        return False
    return status == 200 and any(v["state"] == "AVAILABLE" for v in body["model_version_status"])
