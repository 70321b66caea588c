"""Kubernetes manifests from `psflow-serve --k8s`: they validate against the Kubernetes API
schemas (offline, with kubernetes-validate, as the training manifests do), run psflow-serve
on the claim the training job writes to, and are ready only when the model is available.
And the training side of that path: `launch --export-dir` makes the chief export versions."""

import io
import os
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import numpy as np
import pytest
import yaml

from psflow.errors import InvalidArgumentError
from psflow.saved_model import Predictor
from psflow.serving import k8s_manifests
from psflow.serving.__main__ import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES_VERSION = "1.33"
BASE = ["--k8s", "--image", "registry.example/psflow:1", "--model_name", "ctr",
        "--model_base_path", "/checkpoints/export/ctr"]


def generate(*args):
    result = subprocess.run([sys.executable, "-m", "psflow.serving", *map(str, args)],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return list(yaml.safe_load_all(result.stdout))


def by_kind(documents):
    return {d["kind"]: d for d in documents}


def validate(document):
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_serving_manifests_validate_and_serve_the_claim():
    docs = generate(*BASE, "--pvc", "ckpt", "--replicas", 3, "--namespace", "ml",
                    "--cpu", "2", "--memory", "4Gi", "--memory-limit", "8Gi")
    for doc in docs:
        validate(doc)
    kinds = by_kind(docs)
    assert set(kinds) == {"Deployment", "Service"}
    deployment = kinds["Deployment"]
    assert deployment["metadata"] == {"name": "psflow-serve-ctr", "namespace": "ml",
                                      "labels": {"app.kubernetes.io/name": "psflow-serve",
                                                 "psflow.io/serve": "psflow-serve-ctr"}}
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"] == spec["template"]["metadata"]["labels"]
    container = pod["containers"][0]
    assert container["image"] == "registry.example/psflow:1"
    command = container["command"]
    assert command[:4] == ["python", "-P", "-m", "psflow.serving"]
    assert "--model_name=ctr" in command and "--port=8500" in command
    assert "--rest_api_port=8501" in command
    assert "--model_base_path=/checkpoints/export/ctr" in command
    # The same flags start a server: the command line is psflow-serve's own.
    args = build_parser().parse_args(command[4:])
    assert (args.model_name, args.port, args.rest_api_port) == ("ctr", 8500, 8501)
    assert container["ports"] == [{"name": "grpc", "containerPort": 8500},
                                  {"name": "http", "containerPort": 8501}]
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "4Gi"},
                                      "limits": {"memory": "8Gi"}}
    # Ready only when the model has an available version: the model's gRPC health status.
    assert container["readinessProbe"]["grpc"] == {"port": 8500, "service": "ctr"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v1/models/ctr", "port": 8501}
    # The claim where `launch --k8s --checkpoint-pvc ckpt` writes, at the same path.
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "ckpt",
                                                        "readOnly": True}} in pod["volumes"]
    assert {"name": "models", "mountPath": "/checkpoints", "readOnly": True} \
        in container["volumeMounts"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["terminationGracePeriodSeconds"] > 30  # SIGTERM's grace for requests in flight
    # Prometheus scrapes the REST port's metrics route.
    assert spec["template"]["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true", "prometheus.io/port": "8501",
        "prometheus.io/path": "/monitoring/prometheus/metrics"}
    service = kinds["Service"]["spec"]
    assert service["selector"] == spec["template"]["metadata"]["labels"]
    assert [(p["name"], p["port"]) for p in service["ports"]] == [("grpc", 8500),
                                                                  ("http", 8501)]


@pytest.mark.cluster
def test_the_training_job_writes_where_the_server_reads():
    training = subprocess.run(
        [sys.executable, "-m", "psflow.launcher", "--workers", "1", "--ps", "1", "--k8s",
         "--checkpoint-pvc", "ckpt", "--export-dir", "/checkpoints/export/ctr",
         "examples/digits.py"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert training.returncode == 0, training.stderr
    worker = next(d for d in yaml.safe_load_all(training.stdout)
                  if d["metadata"]["name"] == "psflow-worker")
    pod = worker["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    serving = by_kind(generate(*BASE, "--pvc", "ckpt"))["Deployment"]["spec"]["template"]
    served = serving["spec"]["containers"][0]
    assert env["PSFLOW_EXPORT_DIR"] == "/checkpoints/export/ctr"
    assert f"--model_base_path={env['PSFLOW_EXPORT_DIR']}" in served["command"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
              if "persistentVolumeClaim" in v}
    assert claims == {v["persistentVolumeClaim"]["claimName"]
                      for v in serving["spec"]["volumes"]} == {"ckpt"}


def test_batching_parameters_travel_in_a_config_map(tmp_path):
    path = tmp_path / "batching.config"
    path.write_text("max_batch_size { value: 64 }\nbatch_timeout_micros { value: 1000 }\n")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "psflow.serving", *BASE, "--enable_batching",
                             "--batching_parameters_file", str(path), "--k8s-out", str(out)],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["00-configmap-psflow-serve-ctr-config.yaml",
                                       "01-deployment-psflow-serve-ctr.yaml",
                                       "02-service-psflow-serve-ctr.yaml"]
    assert result.stdout.split() == [str(f) for f in files]
    docs = [yaml.safe_load(f.read_text()) for f in files]
    for doc in docs:
        validate(doc)
    config, deployment = docs[0], docs[1]
    assert config["data"]["batching.config"] == path.read_text()
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "--enable_batching" in container["command"]
    assert "--batching_parameters_file=/etc/psflow-serve/batching.config" in container["command"]
    assert {"name": "config", "mountPath": "/etc/psflow-serve", "readOnly": True} \
        in container["volumeMounts"]


@pytest.mark.parametrize("args, problem", [
    (["--model_base_path", "/models/ctr", "--pvc", "ckpt"], "must be under /checkpoints"),
    (["--model_base_path", "models/ctr"], "absolute"),
    (["--image", ""], "--k8s needs --image"),
    (["--name", "Bad_Name"], "--name"),
    (["--model_name", "ctr_v2"], "--name (or psflow-serve-MODEL_NAME)"),
    (["--replicas", "0"], "--replicas must be at least 1"),
    (["--pvc", "No"], "--pvc must be a DNS label"),
    (["--serving-replicas", "2"], "give --follow"),
    (["--serving-replicas", "-1", "--follow", "ps:2222"], "at least 0"),
    (["--follow", "ps-0"], "HOST:PORT"),
    (["--follow", "ps:2222", "--params_shard", "p:2300"], "either --follow or --params_shard"),
])
def test_bad_k8s_flags_are_one_line_errors(args, problem, capsys):
    assert main([*BASE, *args]) == 2
    err = capsys.readouterr().err
    assert problem in err and len(err.strip().splitlines()) == 1


def test_a_bad_batching_file_is_refused_before_any_manifest(tmp_path, capsys):
    path = tmp_path / "bad.config"
    path.write_text("max_batch_size { value: 0 }")
    assert main([*BASE, "--enable_batching", "--batching_parameters_file", str(path)]) == 2
    captured = capsys.readouterr()
    assert "max_batch_size must be at least 1" in captured.err and captured.out == ""


def test_the_claim_is_mounted_where_the_training_pods_mount_it():
    from psflow.launcher import k8s
    assert k8s_manifests.CHECKPOINT_MOUNT == k8s.CHECKPOINT_MOUNT


def test_the_manifests_round_trip_through_yaml():
    args = build_parser().parse_args([*BASE, "--pvc", "ckpt"])
    documents = k8s_manifests.manifests(args)
    out = io.StringIO()
    assert k8s_manifests.main(args, out) == 0
    assert list(yaml.safe_load_all(out.getvalue())) == documents
    assert "&id" not in out.getvalue()  # no YAML anchors: plain manifests
    with pytest.raises(InvalidArgumentError):
        k8s_manifests.manifests(build_parser().parse_args(["--k8s", "--image", "i"]))


@pytest.mark.cluster
def test_launch_export_dir_makes_the_chief_export_versions_a_predictor_loads(tmp_path):
    base = tmp_path / "export"
    script = ROOT / "tests" / "cluster_scripts" / "export_from_settings.py"
    result = subprocess.run([sys.executable, "-m", "psflow.launcher", "--no-progress",
                             "--workers", "2", "--ps", "1", "--export-dir", str(base),
                             "--export-every-n-checkpoints", "2", str(script), str(tmp_path)],
                            capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    versions = sorted(os.listdir(base), key=int)
    assert versions[0] == "1" and len(versions) >= 2, versions  # every 2 checkpoints, and last
    weights = np.load(tmp_path / "weights.npz")
    x = np.random.default_rng(1).normal(size=(5, 3))
    got = Predictor.load(str(base / versions[-1])).predict({"x": x})["y"]
    assert np.max(np.abs(got - (x @ weights["w"] + weights["b"]))) <= 1e-6
    assert Predictor.load(str(base / "1")).predict({"x": x})["y"].shape == (5, 1)


def test_export_settings_need_a_signature_and_name_the_setting(monkeypatch):
    import psflow as tf
    monkeypatch.setenv("PSFLOW_EXPORT_DIR", "/nowhere/export")
    with tf.Graph().as_default():
        tf.Variable(1.0, name="v")
        with pytest.raises(ValueError, match="PSFLOW_EXPORT_DIR"):
            tf.train.MonitoredTrainingSession()


@pytest.mark.parametrize("args, problem", [
    (["--export-every-n-checkpoints", "2"], "--export-every-n-checkpoints goes with --export-dir"),
    (["--k8s", "--export-dir", "export/ctr"], "with --k8s, --export-dir is a path in the pods"),
    (["--export-dir", "/x", "--export-every-n-checkpoints", "0"], "at least 1"),
])
def test_bad_export_flags_of_launch_are_one_line_errors(args, problem, capsys):
    from psflow.launcher import cli
    with pytest.raises(SystemExit) as info:
        cli.main(["--workers", "1", "--ps", "1", *args, str(ROOT / "examples" / "digits.py")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert problem in err and len(err.strip().splitlines()) == 1


MODELS = """model_config_list {
  config {
    name: "ctr"
    base_path: "/checkpoints/export/ctr"
    model_version_policy { all {} }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
  }
  config { name: "mlp" base_path: "/checkpoints/export/mlp" }
}
"""
SPLIT = "ctr: {stable: 1, canary: 1}\n"


def _model_files(tmp_path, models=MODELS, split=SPLIT, batching=None):
    paths = ["--model_config_file", tmp_path / "models.config"]
    (tmp_path / "models.config").write_text(models)
    if split is not None:
        (tmp_path / "split.yaml").write_text(split)
        paths += ["--traffic_split_file", tmp_path / "split.yaml"]
    if batching is not None:
        (tmp_path / "batching.config").write_text(batching)
        paths += ["--enable_batching", "--batching_parameters_file", tmp_path / "batching.config"]
    return paths


SEVERAL = ["--k8s", "--image", "registry.example/psflow:1", "--pvc", "ckpt"]


def test_a_model_config_file_travels_in_a_config_map_and_the_pods_serve_every_model(tmp_path):
    docs = generate(*SEVERAL, *_model_files(tmp_path, batching="max_batch_size { value: 64 }\n"),
                    "--model_config_file_poll_wait_seconds", 30)
    for doc in docs:
        validate(doc)
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("ConfigMap", "psflow-serve-config"), ("Deployment", "psflow-serve"),
        ("Service", "psflow-serve")]
    config, deployment, service = docs
    assert config["data"] == {"models.config": MODELS, "traffic_split.yaml": SPLIT,
                              "batching.config": "max_batch_size { value: 64 }\n"}
    template = deployment["spec"]["template"]
    container = template["spec"]["containers"][0]
    args = build_parser().parse_args(container["command"][4:])
    assert args.model_config_file == "/etc/psflow-serve/models.config"
    assert args.model_config_file_poll_wait_seconds == 30
    assert args.traffic_split_file == "/etc/psflow-serve/traffic_split.yaml"
    assert args.batching_parameters_file == "/etc/psflow-serve/batching.config"
    assert args.enable_batching and args.model_base_path == ""
    assert (args.max_num_load_retries, args.load_retry_interval_micros) == (5, 60_000_000)
    assert container["volumeMounts"] == [
        {"name": "models", "mountPath": "/checkpoints", "readOnly": True},
        {"name": "config", "mountPath": "/etc/psflow-serve", "readOnly": True}]
    assert {"name": "config", "configMap": {"name": "psflow-serve-config"}} \
        in template["spec"]["volumes"]
    # Ready once every model has a version: the server-wide health service (""), not one
    # model's; alive while the REST front answers, whichever models the config names then.
    assert container["readinessProbe"]["grpc"] == {"port": 8500}
    assert container["livenessProbe"]["httpGet"] == {
        "path": "/monitoring/prometheus/metrics", "port": 8501}
    assert template["metadata"]["annotations"]["prometheus.io/port"] == "8501"
    assert [p["port"] for p in service["spec"]["ports"]] == [8500, 8501]


def test_the_ports_given_are_the_pods_and_the_services(tmp_path):
    docs = by_kind(generate(*BASE, "--port", 9000, "--rest_api_port", 9001))
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert "--port=9000" in container["command"] and "--rest_api_port=9001" in container["command"]
    assert [p["containerPort"] for p in container["ports"]] == [9000, 9001]
    assert container["readinessProbe"]["grpc"]["port"] == 9000
    assert container["livenessProbe"]["httpGet"]["port"] == 9001
    assert docs["Deployment"]["spec"]["template"]["metadata"]["annotations"][
        "prometheus.io/port"] == "9001"
    assert [(p["port"], p["targetPort"]) for p in docs["Service"]["spec"]["ports"]] == [
        (9000, "grpc"), (9001, "http")]


@pytest.mark.parametrize("models, split, extra, problem", [
    (MODELS.replace("/checkpoints/export/mlp", "export/mlp"), None, [],
     "model 'mlp': its base path must be a path in the pod, absolute"),
    (MODELS.replace("/checkpoints/export/mlp", "/models/mlp"), None, [],
     "with --pvc, model 'mlp': its base path must be under /checkpoints"),
    (MODELS, "ctr: {stable: 1, beta: 1}\n", [], "has no version label 'beta'"),
    (MODELS, "rank: {stable: 1}\n", [], "model 'rank' is not served"),
    (MODELS.replace('name: "mlp"', 'name: "ctr"'), None, [], "names a model twice"),
    (MODELS, None, ["--model_base_path", "/checkpoints/x"], "give either --model_config_file"),
    (MODELS, None, ["--port", "0"], "--port must be a port from 1 to 65535"),
    (MODELS, None, ["--rest_api_port", "8500"], "--port and --rest_api_port are both 8500"),
])
def test_bad_model_files_for_k8s_are_one_line_errors_before_any_manifest(
        tmp_path, capsys, models, split, extra, problem):
    assert main([*SEVERAL, *map(str, _model_files(tmp_path, models, split)), *extra]) == 2
    captured = capsys.readouterr()
    assert problem in captured.err and len(captured.err.strip().splitlines()) == 1
    assert captured.out == ""


def test_a_split_naming_labels_of_a_single_model_is_refused(tmp_path, capsys):
    (tmp_path / "split.yaml").write_text("ctr: {stable: 1}\n")
    assert main([*BASE, "--traffic_split_file", str(tmp_path / "split.yaml")]) == 2
    assert "has no version label 'stable'" in capsys.readouterr().err


def _pod_command(container, mounts):
    """The container's command as this machine runs it: each mount path replaced by the
    folder standing for it."""
    command = [sys.executable if part == "python" else part for part in container["command"]]
    for mount, folder in mounts.items():
        command = [part.replace(mount, str(folder)) for part in command]
    return command


def _health(port, service):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            return health_pb2.HealthCheckResponse.ServingStatus.Name(
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=5).status)
        except grpc.RpcError:
            return "DOWN"


@pytest.mark.cluster
def test_the_pod_command_serves_every_model_of_the_config_and_is_ready_when_all_are(tmp_path):
    """The Deployment's command, run here with the ConfigMap's files and the claim as local
    folders: ready only once both models have a version, predicts both, splits the traffic,
    and answers the metrics where the scrape annotations point."""
    import json
    import signal
    import urllib.request

    from psflow.launcher.resources import free_ports
    import live_predictor
    from test_serving_retries import _export
    from waiting import wait_for
    grpc_port, rest_port = free_ports("127.0.0.1", 2)
    docs = by_kind(generate(*SEVERAL, *_model_files(tmp_path), "--port", grpc_port,
                            "--rest_api_port", rest_port, "--file_system_poll_wait_seconds",
                            0.2))
    claim, config_folder = tmp_path / "claim", tmp_path / "configmap"
    config_folder.mkdir()
    for key, text in docs["ConfigMap"]["data"].items():
        (config_folder / key).write_text(text.replace("/checkpoints", str(claim)))
    _export(claim / "export" / "ctr" / "1", seed=1)
    _export(claim / "export" / "ctr" / "2", seed=2)
    template = docs["Deployment"]["spec"]["template"]
    container = template["spec"]["containers"][0]
    command = _pod_command(container, {"/etc/psflow-serve": config_folder,
                                       "/checkpoints": claim})
    log = open(tmp_path / "serve.log", "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    readiness = container["readinessProbe"]["grpc"].get("service", "")

    def post(model, body):
        request = urllib.request.Request(f"http://127.0.0.1:{rest_port}/v1/models/{model}"
                                         ":predict", data=json.dumps(body).encode())
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())

    try:
        wait_for(lambda: _health(grpc_port, "ctr") == "SERVING", 60, "ctr available")
        assert _health(grpc_port, readiness) == "NOT_SERVING"  # mlp has no version yet
        _export(claim / "export" / "mlp" / "1", seed=3)
        wait_for(lambda: _health(grpc_port, readiness) == "SERVING", 60, "every model")
        x, ids = np.ones((1, 3), np.float32), np.array([4])
        body = {"inputs": {"x": x.tolist(), "ids": ids.tolist()}}
        np.testing.assert_allclose(post("mlp", body)["outputs"],
                                   live_predictor.expected(3, x, ids)["scores"], atol=1e-6)
        want = {seed: live_predictor.expected(seed, x, ids)["scores"] for seed in (1, 2)}
        outputs = [post("ctr", body)["outputs"] for _ in range(4)]
        seeds = [[seed for seed in want if np.allclose(got, want[seed], atol=1e-6)]
                 for got in outputs]
        # The split (stable 1 : canary 1) alternates between versions 1 and 2.
        assert seeds in ([[1], [2], [1], [2]], [[2], [1], [2], [1]]), seeds
        annotations = template["metadata"]["annotations"]
        with urllib.request.urlopen(f"http://127.0.0.1:{annotations['prometheus.io/port']}"
                                    f"{annotations['prometheus.io/path']}", timeout=30) as got:
            metrics = got.read().decode()
        for model, version, count in (("ctr", 1, 2), ("ctr", 2, 2), ("mlp", 1, 1)):
            assert (f'psflow_serving_requests_total{{model="{model}",version="{version}"}} '
                    f'{count}.0') in metrics
        liveness = container["livenessProbe"]["httpGet"]
        with urllib.request.urlopen(f"http://127.0.0.1:{liveness['port']}{liveness['path']}",
                                    timeout=30) as alive:
            assert alive.status == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


FOLLOWED = ["--follow", "ctr-ps-0.ctr.ml.svc.cluster.local:2222,"
            "ctr-ps-1.ctr.ml.svc.cluster.local:2222", "--auth-secret", "ctr-auth",
            "--namespace", "ml"]


@pytest.mark.cluster  # a concurrency or timing run
def test_a_serving_parameter_tier_follows_each_training_shard_on_r_replicas():
    from psflow.serving.params_server import build_parser as params_parser
    docs = generate(*BASE, *FOLLOWED, "--serving-replicas", 3)
    for doc in docs:
        validate(doc)
    sets = [d for d in docs if d["kind"] == "StatefulSet"]
    assert [s["metadata"]["name"] for s in sets] == ["psflow-serve-ctr-params-0",
                                                     "psflow-serve-ctr-params-1"]
    serve = next(d for d in docs if d["kind"] == "Deployment")
    container = serve["spec"]["template"]["spec"]["containers"][0]
    args = build_parser().parse_args(container["command"][4:])
    for k, stateful in enumerate(sets):
        spec = stateful["spec"]
        assert spec["replicas"] == 3 and spec["serviceName"] == stateful["metadata"]["name"]
        pod = spec["template"]["spec"]["containers"][0]
        followed = params_parser().parse_args(pod["command"][4:])
        assert followed.follow == f"ctr-ps-{k}.ctr.ml.svc.cluster.local:2222"
        assert pod["readinessProbe"]["grpc"]["port"] == followed.port == 2300
        assert {"name": "PSFLOW_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": "ctr-auth", "key": "token"}}} in pod["env"]
        headless = next(d for d in docs if d["kind"] == "Service"
                        and d["metadata"]["name"] == stateful["metadata"]["name"])
        assert headless["spec"]["clusterIP"] == "None"
        assert args.params_shard[k] == ",".join(
            f"psflow-serve-ctr-params-{k}-{r}.psflow-serve-ctr-params-{k}.ml.svc.cluster.local"
            f":2300" for r in range(3))
    assert args.follow == ""
    # the serving Service never selects a params pod
    selector = next(d for d in docs if d["kind"] == "Service"
                    and d["metadata"]["name"] == "psflow-serve-ctr")["spec"]["selector"]
    for stateful in sets:
        labels = stateful["spec"]["template"]["metadata"]["labels"]
        assert not all(labels.get(k) == v for k, v in selector.items())


def test_without_a_tier_each_serving_pod_follows_the_job_itself():
    docs = generate(*BASE, *FOLLOWED)
    assert {d["kind"] for d in docs} == {"Deployment", "Service"}
    container = by_kind(docs)["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    args = build_parser().parse_args(container["command"][4:])
    assert args.follow == FOLLOWED[1] and args.params_shard == []
    assert container["env"][-1]["valueFrom"]["secretKeyRef"]["name"] == "ctr-auth"
