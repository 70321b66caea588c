"""Kubernetes manifests from `launch --k8s`: they validate against the Kubernetes API schemas
(offline, with kubernetes-validate), say what the job needs, and parse back as written."""

import json
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from psflow.launcher import cli, k8s

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES_VERSION = "1.33"


def generate(*args):
    result = subprocess.run([sys.executable, "-m", "psflow.launcher", *map(str, args)],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return list(yaml.safe_load_all(result.stdout))


def by_kind(documents):
    return {(d["kind"], d["metadata"]["name"]): d for d in documents}


def validate(document):
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_default_manifests_validate_and_describe_the_job():
    docs = generate("--workers", 3, "--ps", 2, "--k8s", "--name", "digits", "--namespace",
                    "ml", "--image", "registry.example/psflow:1", "--cpu", "1", "--memory",
                    "2Gi", "--cpu-limit", "2", "--memory-limit", "4Gi", "--mode", "sync",
                    "examples/digits.py", "--steps", 600)
    for doc in docs:
        validate(doc)
    kinds = by_kind(docs)
    assert set(kinds) == {("Secret", "digits-auth"), ("Service", "digits"),
                          ("Job", "digits-ps"), ("Job", "digits-worker")}
    service = kinds[("Service", "digits")]["spec"]
    assert service["clusterIP"] == "None" and service["publishNotReadyAddresses"] is True
    for role, count in (("ps", 2), ("worker", 3)):
        job = kinds[("Job", f"digits-{role}")]["spec"]
        assert job["completionMode"] == "Indexed"
        assert job["completions"] == job["parallelism"] == count
        assert job["ttlSecondsAfterFinished"] == 3600 and job["backoffLimit"] == 3 * count
        pod = job["template"]["spec"]
        assert pod["subdomain"] == "digits" and pod["restartPolicy"] == "OnFailure"
        assert pod["securityContext"]["runAsNonRoot"] is True
        container = pod["containers"][0]
        assert container["image"] == "registry.example/psflow:1"
        assert container["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"},
                                          "limits": {"cpu": "2", "memory": "4Gi"}}
        env = {e["name"]: e for e in container["env"]}
        # The pod's index comes from its annotation, into TF_CONFIG by the kubelet's $(VAR)
        # expansion; the index is defined first, as expansion requires.
        names = [e["name"] for e in container["env"]]
        assert names.index("JOB_COMPLETION_INDEX") < names.index("TF_CONFIG")
        assert env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == \
            "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        raw = env["TF_CONFIG"]["value"]
        config = json.loads(raw.replace("$(JOB_COMPLETION_INDEX)", "2"))
        assert config["task"] == {"type": role, "index": 2}
        assert config["cluster"]["ps"] == [
            f"digits-ps-{i}.digits.ml.svc.cluster.local:2222" for i in range(2)]
        assert len(config["cluster"]["worker"]) == 3
        assert env["PSFLOW_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": "digits-auth", "key": "token"}
        # Prometheus's pod discovery finds every pod's metrics by its annotations.
        assert job["template"]["metadata"]["annotations"] == {
            "prometheus.io/scrape": "true", "prometheus.io/port": "9090",
            "prometheus.io/path": "/metrics"}
        assert {"name": "metrics", "containerPort": 9090} in container["ports"]
        assert env["PSFLOW_METRICS_PORT"]["value"] == "9090"
        assert env["PSFLOW_METRICS_HOST"]["value"] == "0.0.0.0"
    ps = kinds[("Job", "digits-ps")]["spec"]["template"]["spec"]["containers"][0]
    assert ps["command"][:4] == ["python", "-P", "-m", "psflow.ps"]
    assert ps["readinessProbe"]["grpc"] == {"port": 2222, "service": "psflow.ParameterServer"}
    assert ps["livenessProbe"]["grpc"]["port"] == 2222
    worker = kinds[("Job", "digits-worker")]["spec"]["template"]["spec"]["containers"][0]
    assert worker["command"] == ["python", "/app/examples/digits.py", "--steps", "600"]
    assert {"name": "PSFLOW_MODE", "value": "sync"} in worker["env"]
    assert len(kinds[("Secret", "digits-auth")]["stringData"]["token"]) >= 32


def test_never_restart_policy_bounds_each_index_and_a_pvc_holds_checkpoints():
    docs = generate("--workers", 2, "--ps", 1, "--k8s", "--k8s-restart-policy", "Never",
                    "--max-restarts", 2, "--checkpoint-pvc", "ckpt", "--tls-secret", "ps-tls",
                    "examples/digits.py")
    for doc in docs:
        validate(doc)
    job = by_kind(docs)[("Job", "psflow-worker")]["spec"]
    assert job["backoffLimitPerIndex"] == 2 and "backoffLimit" not in job
    pod = job["template"]["spec"]
    assert {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "ckpt"}} \
        in pod["volumes"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["PSFLOW_CHECKPOINT_DIR"] == "/checkpoints"
    assert env["PSFLOW_TLS_CA"] == "/etc/psflow/tls/ca.crt"


@pytest.mark.cluster
def test_the_tfjob_flavour_cleans_up_its_pods_and_its_pods_validate():
    docs = generate("--workers", 2, "--ps", 2, "--k8s", "--k8s-flavor", "tfjob", "--name",
                    "digits", "examples/digits.py")
    kinds = by_kind(docs)
    validate(kinds[("Secret", "digits-auth")])
    tfjob = kinds[("TFJob", "digits")]
    assert tfjob["apiVersion"] == "kubeflow.org/v1"
    assert tfjob["spec"]["runPolicy"]["cleanPodPolicy"] == "All"
    for role, count in (("PS", 2), ("Worker", 2)):
        replica = tfjob["spec"]["tfReplicaSpecs"][role]
        assert replica["replicas"] == count
        template = replica["template"]
        container = template["spec"]["containers"][0]
        assert container["name"] == "tensorflow"  # the operator looks for this container
        assert container["ports"] == [{"name": "tfjob-port", "containerPort": 2222},
                                      {"name": "metrics", "containerPort": 9090}]
        assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        # The operator injects TF_CONFIG; the pod template is a valid one.
        assert "TF_CONFIG" not in {e["name"] for e in container["env"]}
        validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
                  "spec": template["spec"]})


@pytest.mark.cluster
def test_k8s_out_writes_one_file_per_manifest(tmp_path):
    result = subprocess.run([sys.executable, "-m", "psflow.launcher", "--workers", "1", "--ps",
                             "1", "--k8s", "--k8s-out", str(tmp_path), "examples/digits.py"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["00-secret-psflow-auth.yaml", "01-service-psflow.yaml",
                                       "02-job-psflow-ps.yaml", "03-job-psflow-worker.yaml"]
    assert result.stdout.split() == [str(f) for f in files]
    for f in files:
        validate(yaml.safe_load(f.read_text()))


@pytest.mark.parametrize("args, problem", [
    (["--name", "Bad_Name"], "--name must be a DNS label"),
    (["--namespace=-x"], "--namespace must be a DNS label"),
    (["--image", "has space"], "--image must be an image reference"),
    (["--checkpoint-pvc", "No"], "--checkpoint-pvc must be a Kubernetes name"),
])
def test_bad_k8s_options_are_one_line_errors(args, problem, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--workers", "1", "--ps", "1", "--k8s", *args, str(ROOT / "examples" /
                                                                     "digits.py")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert problem in err and len(err.strip().splitlines()) == 1


def test_yaml_round_trips_awkward_values():
    doc = {"a": "yes", "b": "0.0.0.0", "c": "-m", "d": "", "e": [], "f": {}, "g": "x: y",
           "h": [{"i": 1, "j": [True, None, "#"]}], "k": "multi\nline", "l": 2.5,
           "m": [{}, [], {"n": []}, [[], {}]], "o": "007", "p": "null", "q": "1e3"}
    assert yaml.safe_load(k8s.to_yaml([doc])) == doc


@pytest.mark.parametrize("flavor", ["jobs", "tfjob"])
@pytest.mark.parametrize("extras", [{}, {"checkpoint_pvc": "ckpt", "tls_secret": "tls",
                                         "cpu": "1", "memory": "2Gi"}])
def test_every_manifest_round_trips_through_yaml(flavor, extras):
    from psflow.launcher.job_spec import JobSpec
    job = JobSpec(script="examples/digits.py", script_args=["--steps", "10"], workers=3, ps=2,
                  mode="ssp", staleness=2)
    documents = k8s.manifests(job, k8s.K8sSpec(name="rt", flavor=flavor, **extras))
    assert list(yaml.safe_load_all(k8s.to_yaml(documents))) == documents
    for k, document in enumerate(documents):
        assert yaml.safe_load(k8s.to_yaml([document])) == document, k


def test_online_manifests_keep_every_pod_running_and_validate():
    from psflow.launcher.job_spec import JobSpec
    job = JobSpec(script="examples/digits.py", workers=3, ps=2, online=True, stop_timeout=90)
    docs = k8s.manifests(job, k8s.K8sSpec(name="live", namespace="ml"))
    for doc in docs:
        validate(doc)
    kinds = by_kind(docs)
    assert set(kinds) == {("Secret", "live-auth"), ("Service", "live"),
                          ("StatefulSet", "live-ps"), ("StatefulSet", "live-worker")}
    for role, count in (("ps", 2), ("worker", 3)):
        spec = kinds[("StatefulSet", f"live-{role}")]["spec"]
        # pods live-ps-0.live.ml.svc.cluster.local...: the addresses TF_CONFIG names
        assert spec["serviceName"] == "live" and spec["replicas"] == count
        assert spec["podManagementPolicy"] == "Parallel"
        assert spec["selector"]["matchLabels"] == spec["template"]["metadata"]["labels"]
        pod = spec["template"]["spec"]
        assert pod["restartPolicy"] == "Always" and "subdomain" not in pod
        assert pod["terminationGracePeriodSeconds"] == 90 + k8s.STOP_MARGIN_S
        container = pod["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        names = [e["name"] for e in container["env"]]
        assert names.index("POD_INDEX") < names.index("TF_CONFIG")
        assert env["POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == \
            "metadata.labels['apps.kubernetes.io/pod-index']"
        config = json.loads(env["TF_CONFIG"]["value"].replace("$(POD_INDEX)", "1"))
        assert config["task"] == {"type": role, "index": 1}
        assert config["cluster"]["ps"] == [
            f"live-ps-{i}.live.ml.svc.cluster.local:2222" for i in range(2)]
        assert env["PSFLOW_ONLINE"]["value"] == "1"
    ps = kinds[("StatefulSet", "live-ps")]["spec"]["template"]["spec"]["containers"][0]
    assert ps["command"][-3:] == ["--online", "--stop-timeout", "90"]


def test_online_tfjob_restarts_always_without_a_backoff_limit():
    from psflow.launcher.job_spec import JobSpec
    job = JobSpec(script="examples/digits.py", workers=2, ps=1, online=True)
    tfjob = by_kind(k8s.manifests(job, k8s.K8sSpec(name="live", flavor="tfjob")))[
        ("TFJob", "live")]
    assert "backoffLimit" not in tfjob["spec"]["runPolicy"]
    for replica in tfjob["spec"]["tfReplicaSpecs"].values():
        assert replica["restartPolicy"] == "Always"
        validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
                  "spec": replica["template"]["spec"]})


def test_online_refuses_the_never_restart_policy(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--workers", "1", "--ps", "1", "--online", "--k8s", "--k8s-restart-policy",
                  "Never", str(ROOT / "examples" / "digits.py")])
    assert info.value.code == 2
    assert "does not go with --k8s-restart-policy Never" in capsys.readouterr().err
