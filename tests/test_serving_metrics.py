"""psflow-serve's Prometheus metrics on the REST port: requests, errors by code and latency per
model and version, counted the same for gRPC and REST, and the versions' states."""

import urllib.request

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from psflow.serving.request_metrics import LATENCY_BUCKETS_S, RequestStats
from test_serving_api import _request, _rest, served  # noqa: F401 (a fixture)


def _scrape(server):
    url = f"http://127.0.0.1:{server.rest_api_port}/monitoring/prometheus/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_stats_count_requests_errors_and_latency_buckets():
    stats = RequestStats()
    stats.record("ctr", "1", 0.0001)
    stats.record("ctr", "1", 0.003, "INVALID_ARGUMENT")
    stats.record("ctr", "1", 100.0)
    requests, errors = stats.snapshot()
    count, buckets, seconds = requests[("ctr", "1")]
    assert count == 3 and sum(buckets) == 3 and seconds == pytest.approx(100.0031)
    assert buckets[0] == 1 and buckets[-1] == 1
    assert buckets[LATENCY_BUCKETS_S.index(0.005)] == 1
    assert errors == {("ctr", "1", "INVALID_ARGUMENT"): 1}


def test_both_fronts_count_per_model_and_version(served):  # noqa: F811 (the fixture)
    server, stub, _, _ = served
    for _ in range(3):
        stub.Predict(_request(), timeout=10)
    for _ in range(2):
        status, _ = _rest(server, "/v1/models/ctr:predict",
                          {"inputs": {"x": [[1, 2, 3]], "ids": [4]}})
        assert status == 200
    with pytest.raises(grpc.RpcError) as failed:
        stub.Predict(_request(x=np.zeros((2, 4), np.float32)), timeout=10)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _rest(server, "/v1/models/ctr/versions/9:predict", {"inputs": {}})[0] == 404
    assert _rest(server, "/v1/models/nope:predict", {"inputs": {}})[0] == 404

    samples = _scrape(server)
    v1 = (("model", "ctr"), ("version", "1"))
    assert samples[("psflow_serving_requests_total", v1)] == 6
    assert samples[("psflow_serving_errors_total", (("code", "INVALID_ARGUMENT"),) + v1)] == 1
    no_version = (("model", "ctr"), ("version", ""))
    assert samples[("psflow_serving_errors_total", (("code", "NOT_FOUND"),) + no_version)] == 1
    unknown = (("model", ""), ("version", ""))
    assert samples[("psflow_serving_errors_total", (("code", "NOT_FOUND"),) + unknown)] == 1
    assert samples[("psflow_serving_request_latency_seconds_count", v1)] == 6
    assert samples[("psflow_serving_request_latency_seconds_bucket",
                    (("le", "+Inf"),) + v1)] == 6
    assert samples[("psflow_serving_request_latency_seconds_sum", v1)] > 0
    state = (("model", "ctr"), ("state", "AVAILABLE"), ("version", "1"))
    assert samples[("psflow_serving_model_version_state", state)] == 1
    assert samples[("psflow_serving_model_version_state",
                    (("model", "ctr"), ("state", "LOADING"), ("version", "1")))] == 0
