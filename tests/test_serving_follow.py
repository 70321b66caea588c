"""psflow-serve --follow as a real process: its versions read table rows and variables from
mirrors of the training job's parameter servers (serving.param_follower), kept fresh by the
servers' parameter stream; a change there is in the answers a publish period later."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import psflow as tf
from psflow.proto import psflow_pb2 as pb
from psflow.ps.shard_server import ParameterServer
from psflow.worker.client import ShardClient
from test_remote_params import free_port, set_rows, set_variable
from test_saved_model import ctr, ctr_feeds, serving_inputs, trained
from test_serving_live import EMBEDDING, _serving, by_hand, predict
from waiting import wait_for

pytestmark = pytest.mark.cluster
TESTS = pathlib.Path(__file__).resolve().parent


def test_a_served_version_follows_the_training_jobs_parameters(tmp_path):
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
             f"--model_base_path={tmp_path / 'ctr'}",
             "--follow=" + ",".join(f"127.0.0.1:{s.port}" for s in servers)],
            stdout=open(tmp_path / "serve.log", "w"), stderr=subprocess.STDOUT, env=env)
        wait_for(lambda: _serving(rest_port), 60, "psflow-serve to serve version 1")

        def answers(row, b):
            got = predict(rest_port, [3, 1000])
            return (np.allclose(got["user_embedding"], [row, np.zeros(EMBEDDING)], atol=1e-6)
                    and abs(got["ctr"][0] - by_hand(row, w, b)) < 1e-5)
        wait_for(lambda: answers(rows[2], [0.3]), 20, "the followed rows in the answers")
        set_rows(clients, keys[2:3], rows[2:3], table="features")  # row 3 now twice its value
        set_variable(clients[0], "tower/b", np.array([-2.0]), declare_it=False)
        wait_for(lambda: answers(2 * rows[2], [-2.0]), 10, "the new row and variable")
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
        for server in servers:
            server.stop(grace=0)
