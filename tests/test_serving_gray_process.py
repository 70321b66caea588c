"""A psflow-serve process on loopback ports with a gray release: the traffic split file and
the polled model config file applied while it serves, the split seen in its Prometheus
metrics, and SIGTERM still exiting 0."""

import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from psflow.launcher.resources import free_ports
import live_predictor
from test_serving_config_poll import _config
from test_serving_process import LIVE_SERVER, TESTS, _rest
from waiting import wait_for

pytestmark = pytest.mark.cluster
BODY = {"instances": [{"x": [0.5, -1.0, 2.0], "ids": 3}]}


def _requests_by_version(port):
    url = f"http://127.0.0.1:{port}/monitoring/prometheus/metrics"
    with urllib.request.urlopen(url, timeout=30) as answer:
        text = answer.read().decode()
    return {(sample.labels["model"], sample.labels["version"]): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == "psflow_serving_requests_total"}


def _share(port, n):
    """{version: requests} of `n` requests to ctr naming no version."""
    before = _requests_by_version(port)
    for _ in range(n):
        assert _rest(port, "/v1/models/ctr:predict", BODY)[0] == 200
    after = _requests_by_version(port)
    return {v: after.get(("ctr", v), 0) - before.get(("ctr", v), 0) for v in ("1", "2")}


def _served(port, model):
    try:
        return _rest(port, f"/v1/models/{model}:predict", BODY)[0] == 200
    except (urllib.error.URLError, ConnectionError):
        return False


def test_a_served_gray_release_follows_its_files(tmp_path):
    for name, versions in (("ctr", (1, 2)), ("mlp", (1,))):
        (tmp_path / name).mkdir()
        for version in versions:
            live_predictor.write_version(tmp_path / name, version, seed=version)
    config = tmp_path / "models.config"
    config.write_text(_config(("ctr", tmp_path / "ctr", "all {}", {"stable": 1, "canary": 2})))
    split = tmp_path / "split.yaml"
    split.write_text("ctr: {stable: 3, canary: 1}\n")
    grpc_port, rest_port = free_ports("127.0.0.1", 2)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(TESTS), os.environ.get("PYTHONPATH", "")]))
    with open(tmp_path / "serve.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", LIVE_SERVER, f"--port={grpc_port}",
             f"--rest_api_port={rest_port}", f"--model_config_file={config}",
             "--model_config_file_poll_wait_seconds=0.2", f"--traffic_split_file={split}",
             "--file_system_poll_wait_seconds=0.2"],
            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: _served(rest_port, "ctr") and all(
            s["state"] == "AVAILABLE"
            for s in _rest(rest_port, "/v1/models/ctr")[1]["model_version_status"]),
            60, "both ctr versions")
        assert _share(rest_port, 20) == {"1": 15, "2": 5}

        split.write_text("ctr: {canary: 1}\n")
        wait_for(lambda: _share(rest_port, 4) == {"1": 0, "2": 4}, 60, "the new split")
        config.write_text(_config(("ctr", tmp_path / "ctr", "all {}", {"stable": 1, "canary": 2}),
                                  ("mlp", tmp_path / "mlp", "latest {}", {})))
        wait_for(lambda: _served(rest_port, "mlp"), 60, "mlp added from the config file")
        assert _share(rest_port, 5) == {"1": 0, "2": 5}

        process.terminate()
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
