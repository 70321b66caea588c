"""psflow-serve's parts in process: TensorProto <-> numpy, the version policy, the Source's
scan, the Manager's availability-preserving swaps and handles, the model config file and the
REST JSON formats."""

import numpy as np
import pytest

from psflow.errors import InvalidArgumentError, NotFoundError
from psflow.proto.tfserving import tensor_pb2, types_pb2
from psflow.serving import rest_json, tensor_proto
from psflow.serving.__main__ import build_parser, models_of
from psflow.serving.manager import ModelManager
from psflow.serving.model_config import parse_model_config
from psflow.serving.prediction_servicer import signature_def_map
from psflow.serving.source import VersionSource, scan
from psflow.serving.version_loader import Loader, warmup_inputs
from psflow.serving.version_policy import VersionPolicy
import live_predictor

ARRAYS = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([-1, 2**40], dtype=np.int64),
          np.array([[True], [False]]), np.float16([1.5, -2.0]), np.int8([-3, 4]),
          np.float64([]), np.uint8([[7]]), np.int32(5)]


@pytest.mark.parametrize("encode", [tensor_proto.from_numpy, tensor_proto.typed])
@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{a.shape}")
def test_tensor_proto_round_trip(encode, array):
    wire = encode(array).SerializeToString()
    back = tensor_proto.to_numpy(tensor_pb2.TensorProto.FromString(wire))
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_tensor_proto_strings_and_a_single_typed_value_filling_the_shape():
    back = tensor_proto.to_numpy(tensor_proto.from_numpy(np.array(["a", "bé"], dtype=object)))
    assert list(back) == [b"a", "bé".encode()]
    message = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[2.5])
    message.tensor_shape.dim.add(size=2)
    message.tensor_shape.dim.add(size=2)
    np.testing.assert_array_equal(tensor_proto.to_numpy(message), np.full((2, 2), 2.5))


def _message(dtype, dims, **fields):
    message = tensor_pb2.TensorProto(dtype=dtype, **fields)
    for size in dims:
        message.tensor_shape.dim.add(size=size)
    return message


@pytest.mark.parametrize("message,error", [
    (_message(types_pb2.DT_INVALID, [1]), "has no dtype"),
    (_message(types_pb2.DT_FLOAT, [3], tensor_content=b"\0" * 8), "holds 8 bytes"),
    (_message(types_pb2.DT_FLOAT, [3], float_val=[1, 2]), "holds 2 values"),
    (_message(types_pb2.DT_FLOAT, [-1], float_val=[1]), "negative dimension"),
    (_message(types_pb2.DT_INT8, [1], int_val=[300]), "out of the range"),
    (_message(types_pb2.DT_COMPLEX64, [1]), "not supported"),
    (_message(types_pb2.DT_STRING, [1], tensor_content=b"a"), "string_val"),
])
def test_malformed_tensor_protos_are_refused_by_name(message, error):
    with pytest.raises(InvalidArgumentError, match=error) as info:
        tensor_proto.to_numpy(message, "x")
    assert "input 'x'" in str(info.value)


def test_version_policies():
    found = {1: "a", 3: "c", 2: "b"}
    assert VersionPolicy().select(found) == {3: "c"}
    assert VersionPolicy("latest", count=2).select(found) == {3: "c", 2: "b"}
    assert VersionPolicy("all").select(found) == found
    assert VersionPolicy("specific", versions=[1, 7]).select(found) == {1: "a"}
    with pytest.raises(InvalidArgumentError):
        VersionPolicy("newest")


def test_the_source_sees_numbered_folders_only(tmp_path):
    assert scan(tmp_path / "missing") == {}
    (tmp_path / "3").mkdir()
    (tmp_path / "12").mkdir()
    (tmp_path / ".tmp-13").mkdir()
    (tmp_path / "latest").mkdir()
    (tmp_path / "14").write_text("a file")
    assert scan(tmp_path) == {3: str(tmp_path / "3"), 12: str(tmp_path / "12")}
    seen = []
    VersionSource(str(tmp_path), VersionPolicy(), seen.append, poll_wait_seconds=0).poll()
    assert seen == [{12: str(tmp_path / "12")}]


def _manager(tmp_path, labels=None, retries=0):
    events = []
    manager = ModelManager("ctr", Loader(live_predictor.load, max_num_load_retries=retries),
                           labels, lambda name, available: events.append(available))
    return manager, events


def _predict(handle, seed):
    x, ids = np.ones((2, 3), np.float32), np.array([1, 4])
    out = handle.servable.predictor().predict({"x": x, "ids": ids})
    np.testing.assert_allclose(out["scores"], live_predictor.expected(seed, x, ids)["scores"],
                               rtol=1e-6)


def test_the_manager_loads_the_new_version_before_unloading_the_old(tmp_path):
    manager, events = _manager(tmp_path)
    with pytest.raises(NotFoundError, match=r"^Servable not found for request: Latest\(ctr\)"):
        manager.handle()  # TF Serving's NOT_FOUND while no version is available
    v1 = live_predictor.write_version(tmp_path, 1, seed=1)
    manager.aspire({1: v1})
    assert events == [True]
    held = manager.handle()
    assert held.version == 1
    v2 = live_predictor.write_version(tmp_path, 2, seed=2)
    manager.aspire({2: v2})
    with manager.handle() as latest:
        assert latest.version == 2
        _predict(latest, 2)
    states = {s.version: s.state for s in manager.statuses()}
    assert states == {2: "AVAILABLE", 1: "UNLOADING"}  # a request still holds version 1
    _predict(held, 1)
    with pytest.raises(NotFoundError, match="version 1"):
        manager.handle(version=1)
    held.release()
    assert {s.version: s.state for s in manager.statuses()} == {2: "AVAILABLE", 1: "END"}
    assert events == [True]


def test_a_version_that_fails_to_load_leaves_the_current_one_serving(tmp_path):
    manager, _ = _manager(tmp_path)
    manager.aspire({1: live_predictor.write_version(tmp_path, 1, seed=1)})
    manager.aspire({2: live_predictor.write_version(tmp_path, 2, seed=2, broken=True)})
    with manager.handle() as handle:
        assert handle.version == 1
        _predict(handle, 1)
    (failed,) = manager.statuses(version=2)
    assert failed.state == "END" and failed.error_code == "DATA_LOSS"
    assert "corrupt" in failed.error_message
    manager.aspire({2: str(tmp_path / "2")})  # its tries ran out: still serving version 1
    assert manager.handle().version == 1


def test_labels_name_versions(tmp_path):
    manager, _ = _manager(tmp_path, labels={"stable": 1, "canary": 2})
    manager.aspire({v: live_predictor.write_version(tmp_path, v, seed=v) for v in (1, 2)})
    assert manager.handle(label="stable").version == 1
    assert manager.handle(label="canary").version == 2
    with pytest.raises(InvalidArgumentError, match="label 'beta'"):
        manager.handle(label="beta")


def test_warmup_inputs_follow_the_signature():
    inputs = warmup_inputs(live_predictor.small_ctr_model(0).signature)
    assert inputs["x"].shape == (1, 3) and inputs["x"].dtype == np.float32
    assert inputs["ids"].shape == (1,) and inputs["ids"].dtype == np.int64


class _Refusing:
    """A predictor that takes no request of zeros, of any batch (as a model with a
    SparseTensor input whose dense shape must cover its indices refuses batch 1)."""

    def __init__(self, signature, refuse_batches):
        self.signature, self.signatures = signature, {"serving_default": signature}
        self.refuse_batches, self.batches = refuse_batches, []

    def predict(self, inputs):
        batch = len(inputs["ids"])
        self.batches.append(batch)
        if batch in self.refuse_batches:
            raise InvalidArgumentError(f"cannot take batch {batch}")
        return {key: np.zeros(batch) for key in self.signature.outputs}


@pytest.mark.parametrize("refused,timed", [((1,), True), ((0, 1), False)])
def test_a_model_that_refuses_zeros_is_warmed_with_batch_0_or_not_at_all(refused, timed):
    signature = live_predictor.small_ctr_model(0).signature
    predictor = _Refusing(signature, refused)
    servable = Loader(lambda path, signature: predictor).load(1, "/models/ctr/1")
    assert predictor.batches[:2] == [1, 0]
    assert (servable.warmup_seconds is not None) == timed


CONFIG = """
model_config_list {
  config {
    name: "ctr"
    base_path: "/models/ctr"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 3 versions: 4 } }
    version_labels { key: "stable" value: 3 }
    version_labels { key: "canary" value: 4 }
  }
  config { name: "mlp" base_path: "/models/mlp" model_version_policy { all {} } }
  config {
    name: "cnn" base_path: "/models/cnn" model_version_policy { latest { num_versions: 2 } }
  }
}
"""


def test_the_model_config_file_format():
    ctr, mlp, cnn = parse_model_config(CONFIG)
    assert (ctr.name, ctr.base_path, ctr.labels) == ("ctr", "/models/ctr",
                                                     {"stable": 3, "canary": 4})
    assert ctr.policy.kind == "specific" and ctr.policy.versions == {3, 4}
    assert mlp.policy.kind == "all"
    assert (cnn.policy.kind, cnn.policy.count) == ("latest", 2)


@pytest.mark.parametrize("text,error", [
    ("model_config_list { config { name: 'a' } }", "needs a base_path"),
    ("model_config_list { config { name: 'a' base_path: '/a' bogus: 1 } }", "bogus"),
    ("model_config_list {", "config"),
    ("", "no model_config_list"),
    ("model_config_list { config { name: 'a' base_path: '/a' } config { name: 'a' "
     "base_path: '/b' } }", "twice"),
])
def test_a_bad_model_config_is_refused_clearly(text, error):
    with pytest.raises(InvalidArgumentError, match=error):
        parse_model_config(text, "models.config")


SIGNATURE = live_predictor.small_ctr_model(0).signature


def test_rest_rows_and_columns():
    rows, is_rows = rest_json.request_inputs(
        {"instances": [{"x": [1, 2, 3], "ids": 4}, {"x": [0.5, 0, 0], "ids": 5}]}, SIGNATURE)
    assert is_rows and rows["x"].dtype == np.float32 and rows["x"].shape == (2, 3)
    assert rows["ids"].dtype == np.int64 and list(rows["ids"]) == [4, 5]
    columns, is_rows = rest_json.request_inputs({"inputs": {"x": [[1, 2, 3]], "ids": [4]}},
                                                SIGNATURE)
    assert not is_rows and columns["x"].shape == (1, 3)
    outputs = {"scores": np.array([[1.0], [2.0]]), "probabilities": np.array([[0.1], [0.2]])}
    assert rest_json.predict_answer(outputs, True) == {"predictions": [
        {"scores": [1.0], "probabilities": [0.1]}, {"scores": [2.0], "probabilities": [0.2]}]}
    assert rest_json.predict_answer({"s": np.array([1, 2])}, False) == {"outputs": [1, 2]}
    assert rest_json.predict_answer({"s": np.array([b"\xff", b"a"], dtype=object)}, True) == {
        "predictions": [{"b64": "/w=="}, "a"]}


@pytest.mark.parametrize("body,error", [
    ([1, 2], "JSON object"),
    ({"instances": [], "inputs": {}}, "exactly one"),
    ({"instances": []}, "non-empty"),
    ({"instances": [{"x": [1, 2, 3]}, {"x": [1, 2, 3], "ids": 1}]}, "instance 1"),
    ({"inputs": {"x": [[1, 2, 3]], "ids": [1.5]}}, "fractions"),
    ({"inputs": {"x": [[1, 2], [3]], "ids": [1]}}, "rectangular"),
    ({"inputs": {"x": [["a", "b", "c"]], "ids": [1]}}, "numbers"),
    ({"inputs": {"y": [1]}}, "'y' is not in the signature"),
    ({"inputs": [1, 2]}, "2 inputs"),
])
def test_rest_bad_bodies_are_refused_clearly(body, error):
    with pytest.raises(InvalidArgumentError, match=error):
        rest_json.request_inputs(body, SIGNATURE)


def test_the_flags_name_the_models(tmp_path):
    (tmp_path / "models.config").write_text(CONFIG)
    models = models_of(build_parser().parse_args(
        [f"--model_config_file={tmp_path / 'models.config'}"]))
    assert [m.name for m in models] == ["ctr", "mlp", "cnn"]
    (single,) = models_of(build_parser().parse_args(["--model_name=ctr",
                                                     f"--model_base_path={tmp_path}"]))
    assert (single.name, single.base_path, single.policy.kind) == ("ctr", str(tmp_path),
                                                                   "latest")
    for argv, error in ([[], "--model_base_path"],
                        [[f"--model_config_file={tmp_path / 'none'}"], "cannot read"],
                        [[f"--model_config_file={tmp_path / 'models.config'}",
                          "--model_base_path=/a"], "either"]):
        with pytest.raises(InvalidArgumentError, match=error):
            models_of(build_parser().parse_args(argv))


def test_the_messages_are_tensorflow_s_on_the_wire():
    """TensorBoard ships TensorFlow's own TensorProto and SignatureDef (under another package
    name, same field numbers): bytes written by one read the same with the other."""
    tensorflow_tensor = pytest.importorskip("tensorboard.compat.proto.tensor_pb2")
    tensorflow_meta = pytest.importorskip("tensorboard.compat.proto.meta_graph_pb2")
    ours = tensor_proto.typed(np.array([[1.5, 2.5]], np.float32))
    theirs = tensorflow_tensor.TensorProto.FromString(ours.SerializeToString())
    assert (theirs.dtype, list(theirs.float_val)) == (1, [1.5, 2.5])
    assert [d.size for d in theirs.tensor_shape.dim] == [1, 2]
    theirs = tensorflow_tensor.TensorProto(dtype=9, int64_val=[4, 5], half_val=[1])
    theirs.tensor_shape.dim.add(size=2)
    back = tensor_pb2.TensorProto.FromString(theirs.SerializeToString())
    assert (back.dtype, list(back.int64_val), list(back.half_val)) == (
        types_pb2.DT_INT64, [4, 5], [1])
    ours = signature_def_map({"serving_default": SIGNATURE}).signature_def["serving_default"]
    theirs = tensorflow_meta.SignatureDef.FromString(ours.SerializeToString())
    assert theirs.method_name == "tensorflow/serving/predict"
    assert theirs.inputs["x"].name == "x" and theirs.inputs["x"].dtype == 1
    assert [d.size for d in theirs.inputs["x"].tensor_shape.dim] == [-1, 3]
