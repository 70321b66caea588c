"""psflow-serve answers TensorFlow Serving's own client: `bench/peers/tfserving_client.py`, built
from the `tensorflow-serving-api` package's stubs and `tf.make_tensor_proto` /
`tf.make_ndarray`, run in TensorFlow's environment (PSFLOW_TFSERVING_PYTHON names its python)
against a psflow-serve process serving two exported models. What it receives must equal the
in-process Predictor's outputs on the same inputs, the signatures, the versions' states and
TF Serving's error codes."""

import importlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import urllib.error

import numpy as np
import pytest

import psflow as tf
from psflow.launcher.resources import free_ports
from psflow.saved_model import Predictor
from test_saved_model import dense, mlp, mlp_feeds, serving_inputs, trained
from test_serving_config_poll import _config
from test_serving_process import _rest
from waiting import wait_for

pytestmark = pytest.mark.cluster
ROOT = pathlib.Path(__file__).resolve().parent.parent
CLIENT = ROOT / "bench" / "peers" / "tfserving_client.py"
RNG = np.random.default_rng(1)


@pytest.fixture(scope="module")
def tfserving_python():
    python = os.environ.get("PSFLOW_TFSERVING_PYTHON")
    if not python:
        pytest.skip("PSFLOW_TFSERVING_PYTHON does not name a python with tensorflow-serving-api")
    try:
        check = subprocess.run([python, "-c", "import tensorflow_serving.apis"],
                               capture_output=True, text=True, timeout=300)
    except OSError as exc:
        pytest.skip(f"PSFLOW_TFSERVING_PYTHON={python} cannot run: {exc}")
    if check.returncode != 0:
        last = (check.stderr.strip().splitlines() or ["no message"])[-1]
        pytest.skip(f"PSFLOW_TFSERVING_PYTHON={python} cannot import tensorflow_serving.apis: "
                    f"{last}")
    return python


def ids_model():
    """An int64 id through a dynamic embedding table, beside a float feature, into a tower."""
    table = tf.get_embedding_variable("items", embedding_dim=4,
                                      initializer=tf.random_normal_initializer(0.0, 0.5))
    ids = tf.placeholder(tf.int64, (None,), name="ids")
    x = tf.placeholder(tf.float32, (None, 3), name="x")
    label = tf.placeholder(tf.float32, (None,), name="label")
    embedding = tf.nn.embedding_lookup(table, ids)
    logit = tf.squeeze(dense(tf.concat([embedding, x], axis=1), 7, 1, "tower"), axis=1)
    loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=label, logits=logit))
    return ({"ids": ids, "x": x, "label": label},
            {"ctr": tf.sigmoid(logit), "embedding": embedding}, loss)


def ids_feeds(inputs):
    # Keys 0..5 get rows; the client also sends 6..9, which read zeros as in training.
    return {inputs["ids"]: RNG.integers(0, 6, 16), inputs["x"]: RNG.random((16, 3)),
            inputs["label"]: RNG.integers(0, 2, 16).astype(np.float32)}


@pytest.fixture(scope="module")
def bases(tfserving_python, tmp_path_factory):
    """mlp versions 1 and 2 (two trainings, so their weights differ), ids version 1."""
    root = tmp_path_factory.mktemp("models")
    for name, version, build, feeds in (("mlp", 1, mlp, mlp_feeds), ("mlp", 2, mlp, mlp_feeds),
                                        ("ids", 1, ids_model, ids_feeds)):
        _, sess, inputs, outputs = trained(build, feeds, steps=3 + version)
        tf.saved_model.simple_save(sess, str(root / name / str(version)),
                                   serving_inputs(inputs), outputs)
    return root


@pytest.fixture(scope="module")
def served(bases, tmp_path_factory):
    """A psflow-serve process serving both models; (grpc port, rest port)."""
    config = bases / "models.config"
    config.write_text(_config(("mlp", bases / "mlp", "all {}", {"stable": 1, "canary": 2}),
                              ("ids", bases / "ids", "latest {}", {})))
    grpc_port, rest_port = free_ports("127.0.0.1", 2)
    log = open(tmp_path_factory.mktemp("log") / "serve.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "psflow.serving", f"--port={grpc_port}",
                                f"--rest_api_port={rest_port}", f"--model_config_file={config}",
                                "--file_system_poll_wait_seconds=0"],
                               stdout=log, stderr=subprocess.STDOUT)

    def available():
        try:
            return all(
                all(v["state"] == "AVAILABLE" for v in _rest(rest_port, f"/v1/models/{m}")[1]
                    ["model_version_status"]) for m in ("mlp", "ids"))
        except (urllib.error.URLError, ConnectionError, KeyError):
            return False
    try:
        wait_for(available, 60, "psflow-serve to serve mlp 1, 2 and ids 1")
        yield grpc_port, rest_port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()


@pytest.fixture(scope="module")
def received(tfserving_python, served):
    grpc_port, rest_port = served
    run = subprocess.run(
        [tfserving_python, str(CLIENT), f"--address=127.0.0.1:{grpc_port}", "--model=mlp",
         "--model=ids", "--version=mlp:1", "--label=mlp:stable", f"--rest-port={rest_port}"],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


@pytest.fixture(scope="module")
def theirs(tfserving_python):
    run = subprocess.run([tfserving_python, str(CLIENT), "--describe"], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


def ours():
    """The same description of psflow.proto.tfserving's messages, enums and services."""
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

    for path in sorted((ROOT / "proto" / "tfserving").glob("*_pb2.py")):
        file = importlib.import_module(f"psflow.proto.tfserving.{path.stem}").DESCRIPTOR
        for descriptor in file.message_types_by_name.values():
            message(descriptor)
        for enum in file.enum_types_by_name.values():
            found["enums"][enum.full_name] = {v.name: v.number for v in enum.values}
        for service in file.services_by_name.values():
            found["services"][service.full_name] = {
                m.name: [m.input_type.full_name, m.output_type.full_name] for m in service.methods}
    return found


# Messages of psflow's that tensorflow-serving-api does not ship (TF Serving's server keeps them).
NOT_IN_THE_CLIENT_PACKAGE = {"tensorflow.serving.BatchingParameters"}


def test_every_field_enum_value_and_method_is_tensorflow_serving_s(theirs):
    """Each field psflow declares has TF's number, type, label and packing; each enum value
    TF's number; each method TF's messages. (psflow leaves some of TF's fields out: a message
    carrying them still parses, and they are ignored.)"""
    mine = ours()
    assert set(mine["messages"]) - set(theirs["messages"]) == NOT_IN_THE_CLIENT_PACKAGE
    for name, fields in mine["messages"].items():
        for field, description in fields.items():
            if name not in NOT_IN_THE_CLIENT_PACKAGE:
                assert theirs["messages"][name].get(field) == description, (name, field)
    for name, values in mine["enums"].items():
        assert {k: theirs["enums"][name].get(k) for k in values} == values, name
    for name, methods in mine["services"].items():
        assert {k: theirs["services"][name].get(k) for k in methods} == methods, name
    assert mine["enums"]["tensorflow.DataType"] == {
        k: v for k, v in theirs["enums"]["tensorflow.DataType"].items() if v < 100}


def predictor(bases, model, version):
    return Predictor.load(str(bases / model / str(version)))


def assert_outputs_equal(got, want, keys=None):
    assert sorted(got) == sorted(keys or want)
    for key, output in got.items():
        value = np.asarray(output["value"], dtype=output["dtype"])
        assert value.dtype == want[key].dtype, key
        assert value.shape == want[key].shape, key
        assert np.max(np.abs(value - want[key]), initial=0) <= 1e-6, key


# Which version each request of the client reaches: latest (2), named (1), label stable (1):
# a request whose version or label went unread would reach 2.
VERSIONS = {"mlp": {"batch1": 2, "batch3": 2, "typed_fill": 2, "python_lists": 2, "version": 1,
                    "label": 1, "output_filter": 2},
            "ids": {"batch1": 1, "batch3": 1, "typed_fill": 1, "python_lists": 1, "version": 1,
                    "output_filter": 1}}


@pytest.mark.parametrize("model", ["mlp", "ids"])
def test_predictions_equal_the_in_process_predictor(bases, received, model):
    answers = received["models"][model]["predict"]
    assert sorted(set(answers) - {"client_id"}) == sorted(VERSIONS[model])
    for name, answer in answers.items():
        version = VERSIONS[model].get(name, VERSIONS[model]["batch3"])
        assert answer["model_spec"]["name"] == model
        assert answer["model_spec"]["version"] == version, name
        serving = predictor(bases, model, version)
        inputs = {k: np.asarray(v["value"], v["dtype"]) for k, v in answer["inputs"].items()}
        want = serving.predict(inputs)
        keys = [sorted(want)[0]] if name == "output_filter" else None
        assert_outputs_equal(answer["outputs"], want, keys)
    assert len(answers["batch1"]["outputs"][sorted(want)[0]]["value"]) == 1
    assert len(answers["batch3"]["outputs"][sorted(want)[0]]["value"]) == 3
    # make_tensor_proto writes arrays to tensor_content, a one-value tensor or one value
    # filling a shape to the dtype's typed field: both are read.
    assert set(answers["batch3"]["encodings"].values()) == {"tensor_content"}
    typed = {"mlp": {"images": "float_val"}, "ids": {"ids": "int64_val", "x": "float_val"}}
    assert answers["typed_fill"]["encodings"] == typed[model]
    if model == "ids":
        assert answers["batch1"]["encodings"] == {"ids": "int64_val", "x": "tensor_content"}
        # Python ints are int32 to make_tensor_proto; the int64 input takes them, as it would
        # an int32 array in process.
        assert answers["python_lists"]["sent_dtypes"] == {"ids": "int32", "x": "float32"}
    large = received["models"][model]["large"]
    assert large["request_bytes"] > 5 << 20
    for key, output in large["outputs"].items():
        assert output["shape"][0] == large["rows"] and output["max_abs_diff"] <= 1e-6, key
    if model == "mlp":  # the versions differ, so the named ones were really reached
        assert answers["version"]["outputs"]["probs"] != answers["batch3"]["outputs"]["probs"]


@pytest.mark.parametrize("model", ["mlp", "ids"])
def test_metadata_is_the_signature(bases, received, model):
    metadata = received["models"][model]["metadata"]
    assert metadata["type_url"] == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    assert metadata["unpacked"] is True
    assert metadata["model_spec"] == {"name": model, "version": 2 if model == "mlp" else 1,
                                      "signature_name": ""}
    signature = predictor(bases, model, 1).signature
    (key,) = metadata["signature_def"]
    got = metadata["signature_def"][key]
    assert key == "serving_default"
    assert got["method_name"] == signature.method_name == "tensorflow/serving/predict"
    for side in ("inputs", "outputs"):
        want = {k: {"name": info.name, "dtype": info.dtype.name, "shape": list(info.shape)}
                for k, info in getattr(signature, side).items()}
        assert got[side] == want


def test_statuses_error_codes_and_health(received):
    mlp_found, ids_found = received["models"]["mlp"], received["models"]["ids"]
    ok = {"state": "AVAILABLE", "error_code": "OK", "error_message": ""}
    assert sorted(mlp_found["status"], key=lambda s: s["version"]) == [
        dict(ok, version=1), dict(ok, version=2)]
    assert ids_found["status"] == [dict(ok, version=1)]
    for found in (mlp_found, ids_found):
        codes = {name: error["code"] for name, error in found["errors"].items()}
        assert codes == {
            "unknown_model": "NOT_FOUND", "unknown_version": "NOT_FOUND",
            "unknown_label": "INVALID_ARGUMENT", "metadata_unknown_model": "NOT_FOUND",
            "status_unknown_model": "NOT_FOUND", "wrong_dtype": "INVALID_ARGUMENT",
            "wrong_shape": "INVALID_ARGUMENT", "unsupported_dtype": "INVALID_ARGUMENT",
            "unknown_input": "INVALID_ARGUMENT",
            "missing_inputs": "INVALID_ARGUMENT", "unknown_signature": "INVALID_ARGUMENT"}
        assert all(error["details"] for error in found["errors"].values())
        assert "DT_BFLOAT16" in found["errors"]["unsupported_dtype"]["details"]
    assert received["health"]["status"] == {
        "": "SERVING", "tensorflow.serving.PredictionService": "SERVING", "mlp": "SERVING",
        "ids": "SERVING", "no-such-model": "NOT_FOUND"}


@pytest.mark.parametrize("model", ["mlp", "ids"])
def test_rest_answers_the_same(bases, received, model):
    found = received["models"][model]
    rest = found["rest"]
    inputs = {k: np.asarray(v["value"], v["dtype"])
              for k, v in found["predict"]["batch3"]["inputs"].items()}
    latest = 2 if model == "mlp" else 1
    want = predictor(bases, model, latest).predict(inputs)
    for name in ("instances", "inputs", "signature_inputs"):
        assert rest[name]["status"] == 200, rest[name]
    rows = rest["instances"]["body"]["predictions"]
    columns = rest["inputs"]["body"]["outputs"]
    assert rest["signature_inputs"]["body"]["outputs"] == columns
    for key, value in want.items():
        np.testing.assert_allclose(np.asarray([row[key] for row in rows]), value, atol=1e-6)
        np.testing.assert_allclose(np.asarray(columns[key]), value, atol=1e-6)
    if model == "mlp":
        stable = rest["label"]["body"]["predictions"]
        np.testing.assert_allclose(np.asarray([row["probs"] for row in stable]),
                                   predictor(bases, "mlp", 1).predict(inputs)["probs"], atol=1e-6)
    assert rest["status"]["status"] == 200
    assert {s["state"] for s in rest["status"]["body"]["model_version_status"]} == {"AVAILABLE"}
    assert rest["metadata"]["status"] == 200
    assert "serving_default" in rest["metadata"]["body"]["metadata"]["signature_def"][
        "signature_def"]
    assert rest["bad_input"]["status"] == 400 and rest["bad_input"]["body"]["error"]
    assert rest["unknown_model"]["status"] == 404 and rest["unknown_model"]["body"]["error"]
