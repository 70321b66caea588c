"""Fuzzing both fronts of psflow-serve, bounded in requests and time: random bytes as
PredictRequest bodies, valid requests mutated byte-wise and field-wise (dtypes, shapes, huge
dimensions, unknown models, versions and labels), random and mutated JSON over REST. Every
answer is a proper error code (never INTERNAL / 500 / a dropped connection), and the server
still answers a valid request correctly afterwards."""

import http.client
import json
import time

import grpc
import numpy as np
import pytest

from psflow.proto.tfserving import get_model_metadata_pb2, model_pb2, predict_pb2, types_pb2
from psflow.serving import tensor_proto
import live_predictor
from test_serving_api import IDS, X, _request, served  # noqa: F401 (a fixture)

REQUESTS = 300
SECONDS = 5.0
GRPC_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
              grpc.StatusCode.RESOURCE_EXHAUSTED}
HTTP_STATUSES = {200, 400, 404, 405, 413}
DTYPES = list(types_pb2.DataType.values()) + [999]


def _rounds(seed):
    """(rng, i) for up to REQUESTS rounds or SECONDS, whichever ends first."""
    rng = np.random.default_rng(seed)
    deadline = time.monotonic() + SECONDS
    for i in range(REQUESTS):
        if time.monotonic() > deadline:
            return
        yield rng, i


def _flip(rng, data):
    data = bytearray(data)
    for _ in range(int(rng.integers(1, 8))):
        kind = rng.integers(4)
        at = int(rng.integers(len(data) + 1))
        if kind == 0 and data:
            data[min(at, len(data) - 1)] = int(rng.integers(256))
        elif kind == 1:
            data[at:at] = rng.bytes(int(rng.integers(1, 16)))
        elif kind == 2:
            del data[at:at + int(rng.integers(1, 16))]
        else:
            data = data[:at]
    return bytes(data)


def _mutated_request(rng):
    request = _request()
    kind = rng.integers(9)
    key = str(rng.choice(["x", "ids"]))
    tensor = request.inputs[key]
    if kind == 0:
        tensor.dtype = int(rng.choice(DTYPES))
    elif kind == 1:
        tensor.tensor_shape.dim[int(rng.integers(len(tensor.tensor_shape.dim)))].size = int(
            rng.choice([-1, 0, 2**31, 2**40, 2**62, 2**63 - 1]))
    elif kind == 2:
        del tensor.tensor_shape.dim[:]
        tensor.tensor_shape.dim.add().size = 1 << 20
        tensor.tensor_shape.dim.add().size = 1 << 20
        tensor.ClearField("tensor_content")
        tensor.float_val.append(1.0)
        tensor.int64_val.append(1)
    elif kind == 3:
        tensor.tensor_shape.dim.add().size = int(rng.integers(0, 5))
        tensor.tensor_shape.unknown_rank = bool(rng.integers(2))
    elif kind == 4:
        request.model_spec.name = str(rng.choice(["", "nope", "ctr ", "c" * 300]))
    elif kind == 5:
        request.model_spec.version.value = int(rng.choice([-1, 0, 2, 2**62]))
    elif kind == 6:
        request.model_spec.version_label = str(rng.choice(["", "canary", "\u00e9", "x" * 200]))
    elif kind == 7:
        request.model_spec.signature_name = str(rng.choice(["nope", "serving_default", " "]))
        request.output_filter.append(str(rng.choice(["scores", "nope", ""])))
    else:
        del request.inputs[key]
        request.inputs[str(rng.choice(["y", "", key]))].CopyFrom(
            tensor_proto.from_numpy(rng.standard_normal((2, 3)).astype(
                rng.choice([np.float32, np.float64, np.int32]))))
    return request.SerializeToString()


def _check_still_serving(stub):
    response = stub.Predict(_request(), timeout=10)
    scores = tensor_proto.to_numpy(response.outputs["scores"])
    np.testing.assert_allclose(scores, live_predictor.expected(1, X, IDS)["scores"], rtol=1e-6)


@pytest.mark.cluster
@pytest.mark.parametrize("seed", [0, 1])
def test_fuzzing_grpc_predict(served, seed):  # noqa: F811 (the fixture)
    server, stub, channel, _ = served
    predict = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                                  request_serializer=None, response_deserializer=None)
    valid = _request().SerializeToString()
    codes = {}
    for rng, i in _rounds(seed):
        kind = i % 3
        body = (rng.bytes(int(rng.integers(0, 300))) if kind == 0
                else _flip(rng, valid) if kind == 1 else _mutated_request(rng))
        try:
            answer = predict(body, timeout=10)
            code = grpc.StatusCode.OK
            predict_pb2.PredictResponse.FromString(answer)
        except grpc.RpcError as error:
            code = error.code()
            assert code in GRPC_CODES, (body, code, error.details())
        codes[code] = codes.get(code, 0) + 1
    assert sum(codes.values()) >= 50
    assert grpc.StatusCode.INVALID_ARGUMENT in codes
    _check_still_serving(stub)


@pytest.mark.cluster
def test_fuzzing_grpc_metadata_and_status(served):  # noqa: F811 (the fixture)
    server, stub, channel, _ = served
    valid = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=model_pb2.ModelSpec(name="ctr"), metadata_field=["signature_def"])
    methods = [channel.unary_unary(f"/tensorflow.serving.{path}", request_serializer=None,
                                   response_deserializer=None)
               for path in ("PredictionService/GetModelMetadata", "ModelService/GetModelStatus")]
    for rng, i in _rounds(2):
        body = rng.bytes(int(rng.integers(0, 100))) if i % 2 else _flip(
            rng, valid.SerializeToString())
        try:
            methods[int(rng.integers(2))](body, timeout=10)
        except grpc.RpcError as error:
            assert error.code() in GRPC_CODES, (body, error.code(), error.details())
    _check_still_serving(stub)


def _random_json(rng, depth=0):
    kind = rng.integers(8 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return bool(rng.integers(2))
    if kind == 2:
        return float(rng.choice([0.5, -1e308, 1e308, 3.0]))
    if kind == 3:
        return int(rng.choice([0, -1, 7, 2**31, 2**63, -(2**70)]))
    if kind == 4:
        return str(rng.choice(["", "x", "b64", "\u00e9\u00e9", "1e9"]))
    if kind == 5:
        return [_random_json(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))]
    if kind == 6:
        return {"b64": str(rng.choice(["AAAA", "!!", ""]))}
    keys = ["instances", "inputs", "x", "ids", "signature_name", "b64", "other"]
    return {str(rng.choice(keys)): _random_json(rng, depth + 1)
            for _ in range(int(rng.integers(0, 4)))}


def _mutated_json(rng):
    body = {"instances": [{"x": [0.5, -1.0, 2.0], "ids": 3}, {"x": [1, 0, 0.25], "ids": 7}]}
    kind = rng.integers(6)
    if kind == 0:
        body["instances"][int(rng.integers(2))]["x"] = _random_json(rng)
    elif kind == 1:
        body["instances"][int(rng.integers(2))]["ids"] = _random_json(rng)
    elif kind == 2:
        body = {"inputs": {"x": _random_json(rng), "ids": [3, 7]}}
    elif kind == 3:
        body["signature_name"] = _random_json(rng)
    elif kind == 4:
        body["instances"].append(_random_json(rng))
    else:
        body = {"inputs": {"x": [[[[[[1.0]]]]]] * int(rng.integers(1, 3)), "ids": [1e30]}}
    return json.dumps(body).encode()


PATHS = ["/v1/models/ctr:predict", "/v1/models/ctr/versions/1:predict",
         "/v1/models/ctr/versions/9:predict", "/v1/models/ctr/labels/stable:predict",
         "/v1/models/ctr/labels/nope:predict", "/v1/models/nope:predict",
         "/v1/models/ctr/versions/-1:predict",
         "/v1/models/ctr/versions/99999999999999999999:predict",
         "/v1/models/ctr:classify", "/v1/models/ctr", "/v1/models/ctr/metadata", "/v1/x",
         "/v1/models/%ff%00:predict", "/v1/models/ctr:predict?x=1"]


def _post(port, path, body, method="POST"):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body,
                           headers={"Content-Type": "application/json"})
        answer = connection.getresponse()
        data = answer.read()
        if answer.status != 200:
            assert "error" in json.loads(data), data
        return answer.status
    finally:
        connection.close()


@pytest.mark.cluster
@pytest.mark.parametrize("seed", [0, 1])
def test_fuzzing_rest_predict(served, seed):  # noqa: F811 (the fixture)
    server, stub, _, _ = served
    valid = _mutated_json(np.random.default_rng(99))
    statuses = {}
    for rng, i in _rounds(seed):
        kind = i % 4
        if kind == 0:
            body = rng.bytes(int(rng.integers(0, 200)))
        elif kind == 1:
            body = json.dumps(_random_json(rng)).encode()
        elif kind == 2:
            body = _mutated_json(rng)
        else:
            body = _flip(rng, valid)
        path = PATHS[int(rng.integers(len(PATHS)))] if rng.integers(3) == 0 else PATHS[0]
        method = "GET" if path.endswith(("/ctr", "/metadata")) else "POST"
        status = _post(server.rest_api_port, path, body if method == "POST" else None, method)
        assert status in HTTP_STATUSES, (path, body, status)
        statuses[status] = statuses.get(status, 0) + 1
    assert sum(statuses.values()) >= 50
    assert 400 in statuses
    assert _post(server.rest_api_port, "/v1/models/ctr:predict",
                 json.dumps({"inputs": {"x": X.tolist(), "ids": IDS.tolist()}}).encode()) == 200
    _check_still_serving(stub)


def test_what_fuzzing_found_is_a_clear_error(served):  # noqa: F811 (the fixture)
    server, stub, _, _ = served
    request = _request()
    filled = request.inputs["ids"]
    filled.Clear()
    filled.dtype = types_pb2.DT_INT64
    filled.tensor_shape.dim.add().size = 1 << 40
    filled.int64_val.append(1)  # one value filling 8 TiB
    with pytest.raises(grpc.RpcError) as failed:
        stub.Predict(request, timeout=10)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "over the limit" in failed.value.details()
    assert _post(server.rest_api_port, "/v1/models/ctr/versions/99999999999999999999:predict",
                 b"{}") == 400
    too_big = {"inputs": {"x": [[1e300, 0, 0]], "ids": [1]}}
    assert _post(server.rest_api_port, "/v1/models/ctr:predict",
                 json.dumps(too_big).encode()) == 400
    _check_still_serving(stub)
