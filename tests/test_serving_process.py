"""psflow-serve as a real process on loopback ports: SIGTERM finishes the requests in flight,
refuses new ones and exits 0; and, with psflow's export format, `python -m psflow.serving`
serves a model saved by `saved_model.simple_save` over gRPC and REST."""

import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from rest_calls import rest as _rest

import psflow as tf
from psflow.launcher.resources import free_ports
from psflow.proto.tfserving import predict_pb2, prediction_service_pb2_grpc
from psflow.serving import tensor_proto
import live_predictor
from waiting import wait_for

pytestmark = pytest.mark.cluster
TESTS = pathlib.Path(__file__).resolve().parent
# The server's own main with the live-graph loader: a real process, a real base path.
LIVE_SERVER = ("import sys, live_predictor; from psflow.serving.__main__ import main; "
               "sys.exit(main(sys.argv[1:], load_fn=live_predictor.load))")


def _start(command, base, tmp_path):
    grpc_port, rest_port = free_ports("127.0.0.1", 2)
    log = open(tmp_path / "serve.log", "w")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(TESTS), os.environ.get("PYTHONPATH", "")]))
    process = subprocess.Popen(command + [f"--port={grpc_port}", f"--rest_api_port={rest_port}",
                                          "--model_name=ctr", f"--model_base_path={base}",
                                          "--file_system_poll_wait_seconds=0.2"],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    return process, grpc_port, rest_port


def _available(port):
    try:
        status, body = _rest(port, "/v1/models/ctr")
    except (urllib.error.URLError, ConnectionError):
        return False
    return status == 200 and any(v["state"] == "AVAILABLE" for v in body["model_version_status"])


def _refused(port):
    """A new request is refused: 503 while draining, or no connection once stopped."""
    try:
        status, _ = _rest(port, "/v1/models/ctr")
    except (urllib.error.URLError, ConnectionError):
        return True
    return status == 503


def test_sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits_0(tmp_path):
    base = tmp_path / "ctr"
    base.mkdir()
    live_predictor.write_version(base, 1, seed=1, delay=1.5)
    process, _, rest_port = _start([sys.executable, "-c", LIVE_SERVER], base, tmp_path)
    try:
        wait_for(lambda: _available(rest_port), 60, "the server to serve version 1")
        x, ids = np.ones((1, 3), np.float32), np.array([2])
        body = {"inputs": {"x": x.tolist(), "ids": ids.tolist()}}
        answers = []
        slow = threading.Thread(target=lambda: answers.append(
            _rest(rest_port, "/v1/models/ctr:predict", body)))
        slow.start()
        time.sleep(0.5)  # the request is inside the model's 1.5 s predict
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert _refused(rest_port)
        slow.join(30)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    ((status, answer),) = answers
    assert status == 200
    np.testing.assert_allclose(answer["outputs"]["scores"],
                               live_predictor.expected(1, x, ids)["scores"], rtol=1e-6)


def test_a_saved_model_served_by_python_m_psflow_serving(tmp_path):
    saved_model = pytest.importorskip("psflow.saved_model")
    graph = tf.Graph()
    with graph.as_default():
        x = tf.placeholder(tf.float32, (None, 3), name="x")
        ids = tf.placeholder(tf.int64, (None,), name="ids")
        w_value, table_value = live_predictor.weights(5)
        scores = tf.matmul(x, tf.Variable(w_value)) + tf.reduce_sum(
            tf.gather(tf.Variable(table_value), ids), axis=1, keepdims=True)
        with tf.Session(graph=graph) as sess:
            sess.run(tf.global_variables_initializer())
            saved_model.simple_save(sess, str(tmp_path / "ctr" / "1"),
                                    inputs={"x": x, "ids": ids}, outputs={"scores": scores})
    process, grpc_port, rest_port = _start([sys.executable, "-m", "psflow.serving"],
                                           tmp_path / "ctr", tmp_path)
    try:
        wait_for(lambda: _available(rest_port), 60, "the server to serve version 1")
        xs, id_values = np.random.default_rng(0).random((4, 3), np.float32), np.arange(4)
        want = live_predictor.expected(5, xs, id_values)["scores"]
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "ctr"
        request.inputs["x"].CopyFrom(tensor_proto.from_numpy(xs))
        request.inputs["ids"].CopyFrom(tensor_proto.typed(id_values.astype(np.int64)))
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            response = stub.Predict(request, timeout=30)
        np.testing.assert_allclose(tensor_proto.to_numpy(response.outputs["scores"]), want,
                                   atol=1e-6)
        status, rows = _rest(rest_port, "/v1/models/ctr:predict", {"instances": [
            {"x": xs[i].tolist(), "ids": int(id_values[i])} for i in range(4)]})
        assert status == 200
        np.testing.assert_allclose(rows["predictions"], want, atol=1e-6)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
