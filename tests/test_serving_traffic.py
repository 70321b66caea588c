"""Gray release: the weighted split between version labels (--traffic_split_file), exact over
N requests, re-read when the file changes, a bad file refused at start and ignored (logged,
the last good split kept) while serving."""

import collections
import os

import grpc
import pytest

from psflow.errors import InvalidArgumentError
from psflow.proto.tfserving import predict_pb2, prediction_service_pb2_grpc
from psflow.serving import __main__ as serve_main
from psflow.serving import tensor_proto
from psflow.serving.model_config import ModelSettings
from psflow.serving.model_server import ModelServer
from psflow.serving.traffic_split import TrafficSplit, WeightedChoice, parse_traffic_split
from psflow.serving.version_policy import VersionPolicy
import live_predictor
from test_serving_api import IDS, X
from waiting import wait_for

LABELS = {"stable": 1, "canary": 2}


def _labels_of(model):
    return LABELS if model == "ctr" else None


def test_the_weighted_choice_is_exact_and_interleaved():
    choice = WeightedChoice([("stable", 90), ("canary", 10), ("off", 0)])
    picks = [choice.next() for _ in range(1000)]
    assert collections.Counter(picks) == {"stable": 900, "canary": 100}
    assert picks[:100].count("canary") == 10  # spread over each run, not in a block
    two_to_one = WeightedChoice([("a", 2), ("b", 1)])
    assert [two_to_one.next() for _ in range(6)] == ["a", "b", "a"] * 2


@pytest.mark.parametrize("text, error", [
    ("ctr: [1, 2]", "needs a mapping"),
    ("- ctr", "expected a mapping"),
    ("ctr: {stable: -1}", "non-negative integer"),
    ("ctr: {stable: 1.5}", "non-negative integer"),
    ("ctr: {stable: 0}", "sum to 0"),
    ("ctr: {beta: 1}", "no version label 'beta'"),
    ("rank: {stable: 1}", "'rank' is not served"),
    ("ctr: {stable: 1", "not YAML"),
])
def test_a_bad_split_is_refused_clearly(text, error):
    with pytest.raises(InvalidArgumentError, match=error):
        parse_traffic_split(text, "split.yaml", _labels_of)


def test_the_split_is_re_read_when_it_changes_and_a_bad_change_is_ignored(tmp_path, caplog):
    path = tmp_path / "split.yaml"
    path.write_text("ctr: {stable: 1}\n")
    split = TrafficSplit(str(path), _labels_of, poll_wait_seconds=0)
    assert split.label_for("ctr") == "stable" and split.label_for("rank") is None
    path.write_text("ctr: {canary: 1}\n")
    os.utime(path, ns=(1, 10**18))
    assert split.reload()
    assert split.label_for("ctr") == "canary"
    path.write_text("ctr: {canary: oops}\n")
    os.utime(path, ns=(1, 2 * 10**18))
    assert not split.reload()
    assert "keeping the last good traffic split" in caplog.text
    assert split.label_for("ctr") == "canary"
    path.unlink()
    assert not split.reload()
    assert split.label_for("ctr") == "canary"
    with pytest.raises(InvalidArgumentError, match="cannot read traffic split"):
        TrafficSplit(str(path), _labels_of)


def _request(**spec):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ctr"
    if "version" in spec:
        request.model_spec.version.value = spec["version"]
    request.inputs["x"].CopyFrom(tensor_proto.from_numpy(X))
    request.inputs["ids"].CopyFrom(tensor_proto.from_numpy(IDS))
    return request


def test_a_server_splits_unversioned_requests_by_weight(tmp_path):
    base = tmp_path / "ctr"
    base.mkdir()
    for version in (1, 2):
        live_predictor.write_version(base, version, seed=version)
    split_file = tmp_path / "split.yaml"
    split_file.write_text("ctr: {stable: 3, canary: 1}\n")
    settings = ModelSettings("ctr", str(base), VersionPolicy("all"), LABELS)
    server = ModelServer([settings], port=0, poll_wait_seconds=0.05,
                         load_fn=live_predictor.load, host="127.0.0.1",
                         traffic_split_file=str(split_file))
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    try:
        wait_for(lambda: len([s for s in server.core.status("ctr")
                              if s.state == "AVAILABLE"]) == 2, 10, "both versions")
        served = collections.Counter(stub.Predict(_request(), timeout=10).model_spec.version.value
                                     for _ in range(40))
        assert served == {1: 30, 2: 10}
        assert stub.Predict(_request(version=2), timeout=10).model_spec.version.value == 2
        split_file.write_text("ctr: {canary: 1}\n")
        os.utime(split_file, ns=(1, 10**18))
        # (under the old split a quarter of the answers are version 2 already: the new one
        # is in once eight in a row are)
        wait_for(lambda: {stub.Predict(_request(), timeout=10).model_spec.version.value
                          for _ in range(8)} == {2}, 10, "the new split")
    finally:
        channel.close()
        server.stop(grace=2)


def test_a_bad_split_file_stops_the_server_at_start(tmp_path, capsys):
    base = tmp_path / "ctr"
    base.mkdir()
    split_file = tmp_path / "split.yaml"
    split_file.write_text("ctr: {stable: 1}\n")  # --model_name has no labels
    code = serve_main.main(["--port=0", "--model_name=ctr", f"--model_base_path={base}",
                            f"--traffic_split_file={split_file}"],
                           load_fn=live_predictor.load)
    assert code == 2
    assert "no version label 'stable'" in capsys.readouterr().err


def test_the_split_is_checked_again_when_the_labels_change(tmp_path, caplog):
    labels = {"ctr": {"stable": 1, "canary": 2}}
    path = tmp_path / "split.yaml"
    path.write_text("ctr: {canary: 1}\n")
    split = TrafficSplit(str(path), labels.get, poll_wait_seconds=0)
    assert not split.reload()  # unchanged
    labels["ctr"] = {"stable": 1}
    assert not split.reload(force=True)
    assert "no version label 'canary'" in caplog.text
    assert split.label_for("ctr") == "canary"  # the last good split stays
    labels["ctr"] = {"stable": 1, "canary": 3}
    assert split.reload(force=True)
