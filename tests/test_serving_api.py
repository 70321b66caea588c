"""psflow-serve's two fronts over real sockets: a ModelServer in this process (models loaded
with the live-graph Predictor of live_predictor.py) answering gRPC through the generated
TF Serving stubs and REST through urllib; bad requests answered with the right code while it
keeps serving; versions appearing and failing while it serves."""

import json
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from psflow.proto.tfserving import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    types_pb2,
)
from psflow.serving import rest_api, tensor_proto
from psflow.serving.model_config import ModelSettings
from psflow.serving.model_server import ModelServer
import live_predictor
from waiting import wait_for

X = np.array([[0.5, -1.0, 2.0], [1.0, 0.0, 0.25]], np.float32)
IDS = np.array([3, 7], np.int64)


@pytest.fixture
def served(tmp_path):
    base = tmp_path / "ctr"
    base.mkdir()
    live_predictor.write_version(base, 1, seed=1)
    server = ModelServer([ModelSettings("ctr", str(base), labels={"stable": 1})], port=0,
                         rest_port=0, poll_wait_seconds=0.05, load_fn=live_predictor.load,
                         host="127.0.0.1")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    wait_for(lambda: server.core.available, 10, "version 1 available")
    yield server, stub, channel, base
    channel.close()
    server.stop(grace=2)


def _request(x=X, ids=IDS, encode=tensor_proto.from_numpy, **spec):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = spec.pop("name", "ctr")
    if "version" in spec:
        request.model_spec.version.value = spec.pop("version")
    if "label" in spec:
        request.model_spec.version_label = spec.pop("label")
    request.model_spec.signature_name = spec.pop("signature", "")
    if x is not None:
        request.inputs["x"].CopyFrom(encode(x))
    if ids is not None:
        request.inputs["ids"].CopyFrom(encode(ids))
    return request


def _rest(server, path, body=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(f"http://127.0.0.1:{server.rest_api_port}{path}", data=data,
                                 method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize("encode", [tensor_proto.from_numpy, tensor_proto.typed])
def test_grpc_predict_with_float_and_int64_inputs(served, encode):
    server, stub, _, _ = served
    response = stub.Predict(_request(encode=encode), timeout=10)
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    want = live_predictor.expected(1, X, IDS)
    assert sorted(response.outputs) == ["probabilities", "scores"]
    for key, value in want.items():
        got = tensor_proto.to_numpy(response.outputs[key])
        assert got.dtype == np.float32 and got.shape == (2, 1)
        np.testing.assert_allclose(got, value, rtol=1e-6)


def test_grpc_output_filter_signatures_labels(served):
    _, stub, _, _ = served
    request = _request(label="stable")
    request.output_filter.append("scores")
    assert list(stub.Predict(request, timeout=10).outputs) == ["scores"]
    response = stub.Predict(_request(signature="scores_only", version=1), timeout=10)
    assert list(response.outputs) == ["scores"]
    assert response.model_spec.signature_name == "scores_only"


def test_grpc_metadata_status_and_health(served):
    server, stub, channel, _ = served
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "ctr"
    response = stub.GetModelMetadata(request, timeout=10)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    default = signatures.signature_def["serving_default"]
    assert default.method_name == "tensorflow/serving/predict"
    assert default.inputs["x"].dtype == types_pb2.DT_FLOAT
    assert [d.size for d in default.inputs["x"].tensor_shape.dim] == [-1, 3]
    assert default.inputs["ids"].dtype == types_pb2.DT_INT64
    assert sorted(signatures.signature_def) == ["scores_only", "serving_default"]

    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "ctr"}), timeout=10)
    (version,) = status.model_version_status
    assert version.version == 1
    assert version.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "ctr", "tensorflow.serving.PredictionService"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def _bad_tensor():
    request = _request()
    request.inputs["x"].tensor_content = b"\0" * 5
    return request


@pytest.mark.parametrize("request_of,code,words", [
    (lambda: _request(ids=None), grpc.StatusCode.INVALID_ARGUMENT, "ids"),
    (lambda: _request(x=np.ones((2, 4), np.float32)), grpc.StatusCode.INVALID_ARGUMENT, "x"),
    (lambda: _request(x=np.full((2, 3), b"a", dtype=object)), grpc.StatusCode.INVALID_ARGUMENT,
     "x"),
    (_bad_tensor, grpc.StatusCode.INVALID_ARGUMENT, "tensor_content"),
    (lambda: _request(name="nope"), grpc.StatusCode.NOT_FOUND, "nope"),
    (lambda: _request(version=9), grpc.StatusCode.NOT_FOUND, "version 9"),
    (lambda: _request(label="canary"), grpc.StatusCode.INVALID_ARGUMENT, "canary"),
    (lambda: _request(signature="other"), grpc.StatusCode.INVALID_ARGUMENT, "other"),
])
def test_grpc_bad_requests_get_their_code_and_the_server_keeps_serving(served, request_of,
                                                                      code, words):
    _, stub, _, _ = served
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request_of(), timeout=10)
    assert info.value.code() == code
    assert words in info.value.details()
    assert stub.Predict(_request(), timeout=10).model_spec.version.value == 1


def test_grpc_malformed_protobuf_is_invalid_argument(served):
    _, stub, channel, _ = served
    raw = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                              request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\x0a\xff\xff\xff\xff\x0f garbage", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed PredictRequest" in info.value.details()
    assert stub.Predict(_request(), timeout=10).outputs


def test_rest_predict_rows_and_columns(served):
    server = served[0]
    want = live_predictor.expected(1, X, IDS)
    status, rows = _rest(server, "/v1/models/ctr:predict", {"instances": [
        {"x": X[i].tolist(), "ids": int(IDS[i])} for i in range(2)]})
    assert status == 200
    np.testing.assert_allclose([r["scores"] for r in rows["predictions"]], want["scores"],
                               rtol=1e-6)
    status, columns = _rest(server, "/v1/models/ctr/versions/1:predict",
                            {"inputs": {"x": X.tolist(), "ids": IDS.tolist()},
                             "signature_name": "scores_only"})
    assert status == 200
    np.testing.assert_allclose(columns["outputs"], want["scores"], rtol=1e-6)
    status, labelled = _rest(server, "/v1/models/ctr/labels/stable:predict",
                             {"inputs": {"x": X.tolist(), "ids": IDS.tolist()}})
    assert status == 200
    np.testing.assert_allclose(labelled["outputs"]["probabilities"], want["probabilities"],
                               rtol=1e-6)


def test_rest_status_and_metadata(served):
    server = served[0]
    assert _rest(server, "/v1/models/ctr") == (200, {"model_version_status": [
        {"version": "1", "state": "AVAILABLE",
         "status": {"error_code": "OK", "error_message": ""}}]})
    status, metadata = _rest(server, "/v1/models/ctr/versions/1/metadata")
    assert status == 200
    assert metadata["model_spec"]["name"] == "ctr" and metadata["model_spec"]["version"] == "1"
    default = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert default["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert default["inputs"]["x"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""},
                                                             {"size": "3", "name": ""}]


@pytest.mark.parametrize("path,body,raw,code,words", [
    ("/v1/models/ctr:predict", None, b"{not json", 400, "malformed JSON"),
    ("/v1/models/ctr:predict", {"instances": [{"x": [1, 2, 3]}]}, None, 400, "ids"),
    ("/v1/models/ctr:predict", {"inputs": {"x": [[1, 2]], "ids": [1]}}, None, 400, "x"),
    ("/v1/models/ctr:predict", {"inputs": {"x": [[1, 2, 3]], "ids": [0.5]}}, None, 400,
     "fractions"),
    ("/v1/models/nope:predict", {"inputs": {}}, None, 404, "nope"),
    ("/v1/models/ctr/versions/7:predict", {"inputs": {}}, None, 404, "version 7"),
    ("/v1/models/ctr/labels/canary:predict", {"inputs": {}}, None, 400, "canary"),
    ("/v1/models/ctr/versions/x:predict", {"inputs": {}}, None, 400, "not a number"),
    ("/v1/models/ctr:classify", {"inputs": {}}, None, 400, "classify"),
    ("/v2/anything", {"inputs": {}}, None, 404, "no such resource"),
    ("/v1/models/nope", None, None, 404, "nope"),
])
def test_rest_bad_requests_get_their_code_and_the_server_keeps_serving(served, path, body,
                                                                      raw, code, words):
    server = served[0]
    status, answer = _rest(server, path, body, raw)
    assert status == code, answer
    assert list(answer) == ["error"] and words in answer["error"]
    assert _rest(server, "/v1/models/ctr:predict",
                 {"inputs": {"x": X.tolist(), "ids": IDS.tolist()}})[0] == 200


def test_an_oversized_rest_body_is_refused(served, monkeypatch):
    server = served[0]
    monkeypatch.setattr(rest_api, "MAX_BODY_BYTES", 100)
    status, answer = _rest(server, "/v1/models/ctr:predict", {"inputs": {"x": [[0.0] * 3] * 20}})
    assert status == 413 and "over the limit of 100" in answer["error"]
    monkeypatch.undo()
    assert _rest(server, "/v1/models/ctr")[0] == 200


def test_a_new_version_is_picked_up_and_the_old_unloaded(served):
    server, stub, _, base = served
    live_predictor.write_version(base, 2, seed=2)
    wait_for(lambda: stub.Predict(_request(), timeout=10).model_spec.version.value == 2, 10,
             "version 2 serving")
    response = stub.Predict(_request(), timeout=10)
    np.testing.assert_allclose(tensor_proto.to_numpy(response.outputs["scores"]),
                               live_predictor.expected(2, X, IDS)["scores"], rtol=1e-6)
    wait_for(lambda: _rest(server, "/v1/models/ctr")[1]["model_version_status"][1]["state"]
             == "END", 10, "version 1 unloaded")
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(_request(version=1), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_version_that_fails_to_load_shows_in_the_status_and_the_old_one_serves(served):
    server, stub, _, base = served
    server.loader.max_num_load_retries, server.loader.load_retry_interval_seconds = 1, 0.05
    live_predictor.write_version(base, 2, seed=2, broken=True)
    wait_for(lambda: _rest(server, "/v1/models/ctr")[1]["model_version_status"][0]["state"]
             == "END", 10, "version 2 tried twice")
    failed, current = _rest(server, "/v1/models/ctr")[1]["model_version_status"]
    assert failed["version"] == "2" and failed["state"] == "END"
    assert failed["status"]["error_code"] == "DATA_LOSS"
    assert "corrupt" in failed["status"]["error_message"]
    assert current == {"version": "1", "state": "AVAILABLE",
                       "status": {"error_code": "OK", "error_message": ""}}
    assert stub.Predict(_request(), timeout=10).model_spec.version.value == 1


def test_stopping_refuses_new_requests(served):
    server, stub, _, _ = served
    assert server.core.close(timeout=1)
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(_request(), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert _rest(server, "/v1/models/ctr")[0] == 503
