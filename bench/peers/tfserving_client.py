"""A TensorFlow Serving client as its users write one, built only from the
`tensorflow-serving-api` package's stubs and TensorFlow's `make_tensor_proto` /
`make_ndarray`, run against a server speaking TF Serving's API (psflow-serve or
tensorflow_model_server). It runs in TensorFlow's own environment, never psflow's: both
register `tensorflow.TensorProto`.

For each model it reads the signature from GetModelMetadata, builds inputs from it (batch 1
and batch 3, raw `tensor_content` and one value filling a shape in the typed field), predicts
the latest version, a named version, a version label, with an output filter, from Python lists
(TensorFlow's default dtypes) and in one request over 4 MiB, reads every version's status,
and provokes the errors of an unknown model, version and label and of bad inputs. It prints
one JSON document of everything it sent and received.

    python bench/peers/tfserving_client.py --address localhost:8500 --model ctr \
        [--model mlp --version mlp:1 --label mlp:canary] [--rest-port 8501]
    python bench/peers/tfserving_client.py --describe   # field numbers and types, as JSON
"""

import argparse
import json
import sys

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

SIGNATURE = "serving_default"
SIGNATURE_DEF_MAP_URL = "type.googleapis.com/tensorflow.serving.SignatureDefMap"
TIMEOUT = 30


def shape_of(tensor_shape):
    """A TensorShapeProto as a list (None for unknown sizes), or None for an unknown rank."""
    shape = tf.TensorShape(tensor_shape)
    return None if shape.rank is None else shape.as_list()


def tensor_info(info):
    return {"name": info.name, "dtype": tf.dtypes.as_dtype(info.dtype).name,
            "shape": shape_of(info.tensor_shape)}


def model_spec(spec):
    return {"name": spec.name, "version": spec.version.value if spec.HasField("version") else None,
            "signature_name": spec.signature_name}


def metadata(stub, model):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = model
    request.metadata_field.append("signature_def")
    response = stub.GetModelMetadata(request, timeout=TIMEOUT)
    packed = response.metadata["signature_def"]
    signatures = get_model_metadata_pb2.SignatureDefMap()
    unpacked = packed.Unpack(signatures)
    return {
        "model_spec": model_spec(response.model_spec),
        "type_url": packed.type_url,
        "unpacked": unpacked,
        "signature_def": {
            key: {"method_name": sig.method_name,
                  "inputs": {k: tensor_info(v) for k, v in sig.inputs.items()},
                  "outputs": {k: tensor_info(v) for k, v in sig.outputs.items()}}
            for key, sig in signatures.signature_def.items()},
    }


def sample_inputs(signature, batch, rng):
    """{key: array} fitting the signature: the first unknown size is the batch, others 2."""
    arrays = {}
    for key, info in sorted(signature["inputs"].items()):
        shape = [batch if i == 0 and size is None else (2 if size is None else size)
                 for i, size in enumerate(info["shape"] or [None])]
        dtype = np.dtype(info["dtype"])
        if dtype.kind == "f":
            arrays[key] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            arrays[key] = rng.integers(0, 10, shape).astype(dtype)
        elif dtype.kind == "b":
            arrays[key] = rng.integers(0, 2, shape).astype(bool)
        else:
            raise SystemExit(f"input {key!r} has dtype {dtype}, which this client cannot make")
    return arrays


def predict_request(model, tensors, version=None, label=None, signature_name="",
                    output_filter=()):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.model_spec.signature_name = signature_name
    for key, tensor in tensors.items():
        request.inputs[key].CopyFrom(tensor)
    request.output_filter.extend(output_filter)
    return request


def encodings(tensors):
    """Which TensorProto field carries each input's values."""
    return {key: "tensor_content" if tensor.tensor_content else
            next((f.name for f, _ in tensor.ListFields() if f.name.endswith("_val")), "none")
            for key, tensor in tensors.items()}


def predict(stub, request, arrays, tensors):
    response = stub.Predict(request, timeout=TIMEOUT)
    outputs = {}
    for key, tensor in response.outputs.items():
        value = tf.make_ndarray(tensor)
        outputs[key] = {"dtype": value.dtype.name, "shape": list(value.shape),
                        "value": value.tolist()}
    return {"model_spec": model_spec(response.model_spec),
            "inputs": {k: {"dtype": v.dtype.name, "value": v.tolist()} for k, v in arrays.items()},
            "encodings": encodings(tensors),
            "sent_dtypes": {k: tf.dtypes.as_dtype(v.dtype).name for k, v in tensors.items()},
            "outputs": outputs}


def large(stub, model, batch3, outputs, size=5 << 20):
    """A request over gRPC's default 4 MiB message limit (TF Serving takes up to 2 GiB): batch3's
    rows repeated; each answer row is compared here with batch3's, to keep the output short."""
    row_bytes = sum(v[:1].nbytes for v in batch3.values())
    repeats = -(-size // (3 * row_bytes))
    arrays = {k: np.concatenate([v] * repeats) for k, v in batch3.items()}
    request = predict_request(model, {k: tf.make_tensor_proto(v) for k, v in arrays.items()})
    response = stub.Predict(request, timeout=TIMEOUT)
    found = {"request_bytes": request.ByteSize(), "rows": 3 * repeats, "outputs": {}}
    for key, tensor in response.outputs.items():
        value = tf.make_ndarray(tensor)
        want = np.concatenate([np.asarray(outputs[key]["value"], value.dtype)] * repeats)
        found["outputs"][key] = {
            "dtype": value.dtype.name, "shape": list(value.shape),
            "max_abs_diff": float(np.max(np.abs(value.astype(np.float64) - want), initial=0))
            if value.shape == want.shape else None}
    return found


def error_code(call):
    try:
        call()
    except grpc.RpcError as error:
        return {"code": error.code().name, "details": error.details()}
    return {"code": "OK", "details": ""}


def status(stub, model):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    response = stub.GetModelStatus(request, timeout=TIMEOUT)
    states = get_model_status_pb2.ModelVersionStatus.State
    codes = response.DESCRIPTOR.fields_by_name["model_version_status"].message_type \
        .fields_by_name["status"].message_type.fields_by_name["error_code"].enum_type
    return [{"version": entry.version, "state": states.Name(entry.state),
             "error_code": codes.values_by_number[entry.status.error_code].name,
             "error_message": entry.status.error_message}
            for entry in response.model_version_status]


def health(channel, services):
    """grpc.health.v1 Check of each service: through grpc_health when installed, else the
    two-field messages encoded by hand (what a Kubernetes gRPC probe sends)."""
    names = ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"]
    try:
        from grpc_health.v1 import health_pb2, health_pb2_grpc
    except ImportError:
        raw = channel.unary_unary("/grpc.health.v1.Health/Check")

        def check(service):
            data = service.encode()
            reply = raw(b"\n" + bytes([len(data)]) + data if data else b"", timeout=TIMEOUT)
            return names[reply[1]] if reply[:1] == b"\x08" else "UNKNOWN"
        via = "raw"
    else:
        stub = health_pb2_grpc.HealthStub(channel)

        def check(service):
            return names[stub.Check(health_pb2.HealthCheckRequest(service=service),
                                    timeout=TIMEOUT).status]
        via = "grpc_health"
    answers = {}
    for service in services:
        try:
            answers[service] = check(service)
        except grpc.RpcError as error:
            answers[service] = error.code().name
    return {"via": via, "status": answers}


def exercise(channel, model, version, label, rng):
    prediction = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    found = {"metadata": metadata(prediction, model)}
    signature = found["metadata"]["signature_def"][SIGNATURE]
    served = found["metadata"]["model_spec"]["version"]
    requests = {}
    batch1 = sample_inputs(signature, 1, rng)
    batch3 = sample_inputs(signature, 3, rng)
    raw1 = {k: tf.make_tensor_proto(v) for k, v in batch1.items()}
    raw3 = {k: tf.make_tensor_proto(v) for k, v in batch3.items()}
    requests["batch1"] = (predict_request(model, raw1), batch1, raw1)
    requests["batch3"] = (predict_request(model, raw3, signature_name=SIGNATURE), batch3, raw3)
    # One value filling the shape: make_tensor_proto writes it to float_val / int64_val.
    filled = {k: np.full((2,) + v.shape[1:], v.reshape(-1)[0], v.dtype) for k, v in batch3.items()}
    typed = {k: tf.make_tensor_proto(v.reshape(-1)[0].item(), dtype=tf.as_dtype(v.dtype),
                                     shape=v.shape) for k, v in filled.items()}
    requests["typed_fill"] = (predict_request(model, typed), filled, typed)
    # Python lists with TensorFlow's default dtypes: floats float32, ints int32.
    listed = {k: tf.make_tensor_proto(v.tolist()) for k, v in batch3.items()}
    requests["python_lists"] = (predict_request(model, listed), batch3, listed)
    requests["version"] = (predict_request(model, raw3, version=version or served), batch3, raw3)
    # Fields of newer clients (here `client_id`) a server that does not know them must ignore.
    newer = predict_request(model, raw3)
    if "client_id" in newer.DESCRIPTOR.fields_by_name:
        newer.client_id = b"tfserving_client"
        requests["client_id"] = (newer, batch3, raw3)
    if label is not None:
        requests["label"] = (predict_request(model, raw3, label=label), batch3, raw3)
    first_output = sorted(signature["outputs"])[0]
    requests["output_filter"] = (predict_request(model, raw3, output_filter=[first_output]),
                                 batch3, raw3)
    found["predict"] = {name: predict(prediction, *args) for name, args in requests.items()}
    found["large"] = large(prediction, model, batch3, found["predict"]["batch3"]["outputs"])

    key = sorted(batch3)[0]
    wrong_dtype = dict(raw3, **{key: tf.make_tensor_proto(
        np.full(batch3[key].shape, b"x", dtype=object))})
    wrong_shape = dict(raw3, **{key: tf.make_tensor_proto(batch3[key][..., None])})
    bfloat16 = dict(raw3, **{key: tf.make_tensor_proto(batch3[key].astype(np.float32),
                                                       dtype=tf.bfloat16)})
    extra = dict(raw3, no_such_input=tf.make_tensor_proto(np.zeros(3, np.float32)))
    found["errors"] = {name: error_code(lambda r=request: prediction.Predict(r, timeout=TIMEOUT))
                       for name, request in {
        "unknown_model": predict_request(model + "-no-such-model", raw3),
        "unknown_version": predict_request(model, raw3, version=987654),
        "unknown_label": predict_request(model, raw3, label="no-such-label"),
        "wrong_dtype": predict_request(model, wrong_dtype),
        "wrong_shape": predict_request(model, wrong_shape),
        "unsupported_dtype": predict_request(model, bfloat16),
        "unknown_input": predict_request(model, extra),
        "missing_inputs": predict_request(model, {}),
        "unknown_signature": predict_request(model, raw3, signature_name="no-such-signature"),
    }.items()}
    unknown_metadata = get_model_metadata_pb2.GetModelMetadataRequest()
    unknown_metadata.model_spec.name = model + "-no-such-model"
    unknown_metadata.metadata_field.append("signature_def")
    found["errors"]["metadata_unknown_model"] = error_code(
        lambda: prediction.GetModelMetadata(unknown_metadata, timeout=TIMEOUT))
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    found["status"] = status(models, model)
    unknown_status = get_model_status_pb2.GetModelStatusRequest()
    unknown_status.model_spec.name = model + "-no-such-model"
    found["errors"]["status_unknown_model"] = error_code(
        lambda: models.GetModelStatus(unknown_status, timeout=TIMEOUT))
    return found, batch3


def rest(port, model, label, batch):
    """TF Serving's REST API with plain JSON: row and columnar predicts, status, metadata,
    an error."""
    import requests
    base = f"http://127.0.0.1:{port}/v1/models/{model}"
    columns = {k: v.tolist() for k, v in batch.items()}
    rows = [{k: v[i].tolist() for k, v in batch.items()} for i in range(3)]
    found = {}
    for name, method, url, body in [
            ("instances", "post", f"{base}:predict", {"instances": rows}),
            ("inputs", "post", f"{base}:predict", {"inputs": columns}),
            ("signature_inputs", "post", f"{base}:predict",
             {"signature_name": SIGNATURE, "inputs": columns}),
            ("label", "post", f"{base}/labels/{label}:predict" if label else None,
             {"instances": rows}),
            ("status", "get", base, None),
            ("metadata", "get", f"{base}/metadata", None),
            ("bad_input", "post", f"{base}:predict", {"inputs": {"no_such_input": [1]}}),
            ("unknown_model", "post", f"{base}-no-such-model:predict", {"instances": rows})]:
        if url is None:
            continue
        answer = requests.request(method, url, json=body, timeout=TIMEOUT)
        found[name] = {"status": answer.status_code, "body": answer.json()}
    return found


def describe():
    """The wire contract of the messages and services the client uses, and of every file they
    import: {"messages": {name: {field: [number, type, repeated, packed, message or enum]}},
    "enums": {name: {value: number}}, "services": {name: {method: [input, output]}}}."""
    from tensorflow_serving.apis import model_service_pb2, prediction_service_pb2
    from tensorflow_serving.config import model_server_config_pb2
    found = {"messages": {}, "enums": {}, "services": {}}

    def message(descriptor):
        found["messages"][descriptor.full_name] = {
            f.name: [f.number, f.type, f.is_repeated, f.is_packed,
                     (f.message_type or f.enum_type).full_name
                     if f.message_type or f.enum_type else None]
            for f in descriptor.fields}
        for nested in descriptor.nested_types:
            message(nested)
        for enum in descriptor.enum_types:
            found["enums"][enum.full_name] = {v.name: v.number for v in enum.values}

    seen = set()
    files = [model_service_pb2.DESCRIPTOR, prediction_service_pb2.DESCRIPTOR,
             model_server_config_pb2.DESCRIPTOR]
    while files:
        file = files.pop()
        if file.name in seen:
            continue
        seen.add(file.name)
        files.extend(file.dependencies)
        for descriptor in file.message_types_by_name.values():
            message(descriptor)
        for enum in file.enum_types_by_name.values():
            found["enums"][enum.full_name] = {v.name: v.number for v in enum.values}
        for service in file.services_by_name.values():
            found["services"][service.full_name] = {
                m.name: [m.input_type.full_name, m.output_type.full_name] for m in service.methods}
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--describe", action="store_true",
                        help="print the messages' field numbers and types instead, no server")
    parser.add_argument("--address", help="the gRPC server, host:port")
    parser.add_argument("--model", action="append", help="a model's name")
    parser.add_argument("--version", action="append", default=[],
                        help="MODEL:N, a version to name in one request (default: the latest)")
    parser.add_argument("--label", action="append", default=[],
                        help="MODEL:LABEL, a version label to name in one request")
    parser.add_argument("--rest-port", type=int, help="also try the REST API on this port")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.describe:
        json.dump(describe(), sys.stdout)
        sys.stdout.write("\n")
        return
    if not args.address or not args.model:
        parser.error("--address and --model are needed (or --describe)")
    versions = {m: int(v) for m, v in (item.rsplit(":", 1) for item in args.version)}
    labels = dict(item.rsplit(":", 1) for item in args.label)
    rng = np.random.default_rng(args.seed)
    document = {"tensorflow": tf.__version__, "models": {}}
    # Answers to large requests are over the 4 MiB a channel receives by default.
    with grpc.insecure_channel(args.address,
                               options=[("grpc.max_receive_message_length", -1)]) as channel:
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
        for model in args.model:
            found, batch = exercise(channel, model, versions.get(model), labels.get(model), rng)
            if args.rest_port:
                found["rest"] = rest(args.rest_port, model, labels.get(model), batch)
            document["models"][model] = found
        document["health"] = health(channel, ["", "tensorflow.serving.PredictionService",
                                              *args.model, "no-such-model"])
    json.dump(document, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
