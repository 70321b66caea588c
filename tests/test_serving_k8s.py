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
    service = kinds["Service"]["spec"]
    assert service["selector"] == spec["template"]["metadata"]["labels"]
    assert [(p["name"], p["port"]) for p in service["ports"]] == [("grpc", 8500),
                                                                  ("http", 8501)]


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
