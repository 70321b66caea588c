"""Where psflow-serve answers as tensorflow_model_server does: a version that fails to load is
tried again (--max_num_load_retries, --load_retry_interval_micros) while the current one
serves, and loads once its files are whole; a model with no version available yet answers
NOT_FOUND (404), "Servable not found for request: Latest(NAME)"."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from rest_calls import rest as _rest

import psflow as tf
from psflow.launcher.resources import free_ports
from psflow.proto.tfserving import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from psflow.serving import tensor_proto
from psflow.serving.__main__ import build_parser, load_retries_of, main
from psflow.serving.manager import ModelManager
from psflow.serving.model_config import ModelSettings
from psflow.serving.model_server import ModelServer
from psflow.serving.version_loader import Loader
import live_predictor
from waiting import wait_for

X = np.array([[0.5, -1.0, 2.0], [1.0, 0.0, 0.25]], np.float32)
IDS = np.array([3, 7], np.int64)


class CountingLoad:
    """live_predictor.load, counting the tries per version folder."""

    def __init__(self):
        self.tries = {}

    def __call__(self, export_dir, signature="serving_default"):
        name = os.path.basename(export_dir)
        self.tries[name] = self.tries.get(name, 0) + 1
        return live_predictor.load(export_dir, signature)


def _manager(retries, interval):
    load = CountingLoad()
    loader = Loader(load, max_num_load_retries=retries, load_retry_interval_seconds=interval)
    return ModelManager("ctr", loader), load


def _states(manager):
    return {s.version: s.state for s in manager.statuses()}


def _scores(manager, version=None):
    with manager.handle(version) as handle:
        return handle.version, handle.servable.predictor().predict({"x": X, "ids": IDS})["scores"]


def _fix(base, version, seed):
    """Rewrites a broken version's files in place, as a copy that completes would."""
    with open(os.path.join(base, str(version), "model.json"), "w") as f:
        json.dump({"seed": seed, "broken": False, "delay": 0.0}, f)


@pytest.mark.cluster  # a concurrency or timing run
def test_a_failed_version_is_tried_max_num_load_retries_times_then_ends_with_its_error(
        tmp_path):
    manager, load = _manager(retries=2, interval=0.05)
    try:
        manager.aspire({1: live_predictor.write_version(tmp_path, 1, seed=1)})
        manager.aspire({2: live_predictor.write_version(tmp_path, 2, seed=2, broken=True)})
        assert load.tries["2"] == 1 and _states(manager) == {2: "LOADING", 1: "AVAILABLE"}
        (loading,) = manager.statuses(version=2)
        assert (loading.error_code, loading.error_message) == ("OK", "")  # TF Serving's
        assert _scores(manager)[0] == 1  # the current version serves meanwhile
        wait_for(lambda: _states(manager)[2] == "END", 10, "version 2's tries to run out")
        (failed,) = manager.statuses(version=2)
        assert failed.error_code == "DATA_LOSS" and "corrupt" in failed.error_message
        time.sleep(0.3)  # several intervals: no try after the last one
        assert load.tries["2"] == 3  # the first try and 2 retries
        version, scores = _scores(manager)
        assert version == 1 and _states(manager) == {2: "END", 1: "AVAILABLE"}
        np.testing.assert_allclose(scores, live_predictor.expected(1, X, IDS)["scores"],
                                   rtol=1e-6)
    finally:
        manager.unload_all()


def test_a_version_whose_files_are_fixed_before_the_retries_run_out_becomes_available(
        tmp_path):
    manager, load = _manager(retries=100, interval=0.05)
    try:
        manager.aspire({1: live_predictor.write_version(tmp_path, 1, seed=1)})
        manager.aspire({2: live_predictor.write_version(tmp_path, 2, seed=2, broken=True)})
        wait_for(lambda: load.tries["2"] >= 2, 10, "version 2 tried again")
        assert _states(manager) == {2: "LOADING", 1: "AVAILABLE"}
        _fix(tmp_path, 2, seed=2)
        wait_for(lambda: _states(manager)[2] == "AVAILABLE", 10, "version 2 available")
        version, scores = _scores(manager)
        assert version == 2
        np.testing.assert_allclose(scores, live_predictor.expected(2, X, IDS)["scores"],
                                   rtol=1e-6)
        # Version 2 available, version 1 (no longer asked for) unloaded: the usual swap.
        assert _states(manager) == {2: "AVAILABLE", 1: "END"}
        assert manager.statuses(version=2)[0].error_code == "OK"
    finally:
        manager.unload_all()


@pytest.mark.cluster  # a concurrency or timing run
def test_the_retries_stop_when_the_version_is_no_longer_asked_for(tmp_path):
    manager, load = _manager(retries=100, interval=0.05)
    try:
        manager.aspire({1: live_predictor.write_version(tmp_path, 1, seed=1, broken=True)})
        wait_for(lambda: load.tries["1"] >= 2, 10, "version 1 tried again")
        manager.aspire({2: live_predictor.write_version(tmp_path, 2, seed=2)})
        assert _states(manager) == {2: "AVAILABLE", 1: "END"}
        assert manager.statuses(version=1)[0].error_code == "DATA_LOSS"
        tries = load.tries["1"]
        time.sleep(0.3)
        assert load.tries["1"] == tries
        assert _scores(manager)[0] == 2
    finally:
        manager.unload_all()


def test_unloading_everything_stops_the_retries(tmp_path):
    manager, load = _manager(retries=100, interval=0.05)
    manager.aspire({1: live_predictor.write_version(tmp_path, 1, seed=1, broken=True)})
    manager.unload_all()
    wait_for(lambda: _states(manager) == {1: "END"}, 10, "version 1 given up")
    tries = load.tries["1"]
    time.sleep(0.3)
    assert load.tries["1"] == tries <= 2
    assert manager.statuses(version=1)[0].error_code == "DATA_LOSS"


def test_the_retry_flags_are_tensorflow_model_servers(capsys):
    assert load_retries_of(build_parser().parse_args([])) == (5, 60.0)
    args = build_parser().parse_args(["--max_num_load_retries=0",
                                      "--load_retry_interval_micros=250000"])
    assert load_retries_of(args) == (0, 0.25)
    for flag in ("--max_num_load_retries=-1", "--load_retry_interval_micros=-5"):
        assert main(["--model_base_path=/nowhere", flag]) == 2
        err = capsys.readouterr().err
        assert flag.split("=")[0] + " must be at least 0" in err
        assert len(err.strip().splitlines()) == 1


def _predict_request(model="ctr"):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(tensor_proto.from_numpy(X))
    request.inputs["ids"].CopyFrom(tensor_proto.from_numpy(IDS))
    return request


def test_a_model_with_no_version_yet_answers_not_found_on_both_fronts(tmp_path):
    base = tmp_path / "ctr"
    base.mkdir()
    server = ModelServer([ModelSettings("ctr", str(base))], port=0, rest_port=0,
                         poll_wait_seconds=0.05, load_fn=live_predictor.load, host="127.0.0.1")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    try:
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(_predict_request(), timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert info.value.details().startswith("Servable not found for request: Latest(ctr)")
        metadata = get_model_metadata_pb2.GetModelMetadataRequest(
            metadata_field=["signature_def"])
        metadata.model_spec.name = "ctr"
        with pytest.raises(grpc.RpcError) as info:
            stub.GetModelMetadata(metadata, timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        status, answer = _rest(server.rest_api_port, "/v1/models/ctr:predict",
                               {"inputs": {"x": X.tolist(), "ids": IDS.tolist()}})
        assert status == 404
        assert answer["error"].startswith("Servable not found for request: Latest(ctr)")
        assert _rest(server.rest_api_port, "/v1/models/ctr/metadata")[0] == 404
        # Once a version is there, the same request is answered.
        live_predictor.write_version(base, 1, seed=1)
        wait_for(lambda: server.core.available, 10, "version 1 available")
        response = stub.Predict(_predict_request(), timeout=10)
        np.testing.assert_allclose(tensor_proto.to_numpy(response.outputs["scores"]),
                                   live_predictor.expected(1, X, IDS)["scores"], rtol=1e-6)
    finally:
        channel.close()
        server.stop(grace=2)


def _export(path, seed):
    from psflow import saved_model
    graph = tf.Graph()
    with graph.as_default():
        x = tf.placeholder(tf.float32, (None, 3), name="x")
        ids = tf.placeholder(tf.int64, (None,), name="ids")
        w_value, table_value = live_predictor.weights(seed)
        scores = tf.matmul(x, tf.Variable(w_value)) + tf.reduce_sum(
            tf.gather(tf.Variable(table_value), ids), axis=1, keepdims=True)
        with tf.Session(graph=graph) as sess:
            sess.run(tf.global_variables_initializer())
            saved_model.simple_save(sess, str(path), inputs={"x": x, "ids": ids},
                                    outputs={"scores": scores})


def _versions(port):
    try:
        status, body = _rest(port, "/v1/models/ctr")
    except (urllib.error.URLError, ConnectionError):
        return {}
    if status != 200:
        return {}
    return {int(v["version"]): v["state"] for v in body["model_version_status"]}


@pytest.mark.cluster
def test_psflow_serve_loads_a_version_copied_in_after_its_first_try(tmp_path):
    """A version copied file by file into the base path (not written aside and renamed) fails
    its first tries; once the copy completes, a retry loads it."""
    staging, base = tmp_path / "staging", tmp_path / "ctr"
    _export(base / "1", seed=1)
    _export(staging / "2", seed=2)
    grpc_port, rest_port = free_ports("127.0.0.1", 2)
    with open(tmp_path / "serve.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "psflow.serving", f"--port={grpc_port}",
             f"--rest_api_port={rest_port}", "--model_name=ctr", f"--model_base_path={base}",
             "--file_system_poll_wait_seconds=0.1", "--max_num_load_retries=600",
             "--load_retry_interval_micros=100000"],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _versions(rest_port) == {1: "AVAILABLE"}, 60, "version 1 serving")
        held = "variables.npz"
        os.makedirs(base / "2")
        for entry in sorted(os.listdir(staging / "2")):
            if entry != held:
                shutil.copy(staging / "2" / entry, base / "2" / entry)
        wait_for(lambda: "variables.npz is missing" in (tmp_path / "serve.log").read_text(),
                 60, "version 2 tried without its variables")
        assert _versions(rest_port) == {2: "LOADING", 1: "AVAILABLE"}
        body = {"inputs": {"x": X.tolist(), "ids": IDS.tolist()}}
        status, answer = _rest(rest_port, "/v1/models/ctr:predict", body)
        assert status == 200
        np.testing.assert_allclose(answer["outputs"],
                                   live_predictor.expected(1, X, IDS)["scores"], atol=1e-6)
        shutil.copy(staging / "2" / held, base / "2" / held)
        wait_for(lambda: _versions(rest_port) == {2: "AVAILABLE", 1: "END"}, 60,
                 "version 2 loaded by a retry, version 1 unloaded")
        status, answer = _rest(rest_port, "/v1/models/ctr:predict", body)
        assert status == 200
        np.testing.assert_allclose(answer["outputs"],
                                   live_predictor.expected(2, X, IDS)["scores"], atol=1e-6)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "(try 1 of 601)" in (tmp_path / "serve.log").read_text()
