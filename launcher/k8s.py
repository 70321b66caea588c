"""Kubernetes manifests for a psflow job: `launch --k8s ...` prints them (or writes them with
--k8s-out) instead of running the job.

Default flavour, plain Kubernetes with no operator:
- a Secret with the job's token (PSFLOW_AUTH_TOKEN for every pod);
- a headless Service; every pod sets `subdomain` to it, and an Indexed Job names its pods'
  hosts `<job>-<index>`, so each task has a stable DNS name
  `<name>-ps-0.<name>.<namespace>.svc.cluster.local`;
- the parameter servers as an Indexed Job (completions = parallelism = M), with gRPC readiness
  and liveness probes on the standard health service;
- the workers as an Indexed Job (N);
- `TF_CONFIG` lists those names, and each pod's task index is its JOB_COMPLETION_INDEX
  (read from the pod's completion-index annotation and put into TF_CONFIG by the kubelet's
  `$(VAR)` expansion), so scripts that parse TF_CONFIG themselves see their own task.
The parameter servers exit 0 once every worker is done, so both Jobs complete, and
`ttlSecondsAfterFinished` removes them and their pods.

With `--ps-replicas R` > 1 each shard is an Indexed Job of its own, `<name>-ps-<s>`, of R
replicas, beside a chain master `<name>-chain`, and TF_CONFIG names the replicas and the master
in its own "psflow" key: see launcher.k8s_replicas.

`tfjob` flavour: one Kubeflow TFJob (kubeflow.org/v1) with PS and Worker replicas and
`cleanPodPolicy: All`; the operator injects TF_CONFIG.

Online jobs (`launch --online --k8s`) never complete, so the parameter servers and the workers
are StatefulSets instead of Jobs (same pod names and DNS names, the index from the pod's
`apps.kubernetes.io/pod-index` label), with `restartPolicy: Always`: the kubelet restarts a
failed container with its exponential backoff, without bound. Deleting them stops the job:
every pod gets SIGTERM, the workers end their step, the chief writes the final checkpoint while
the parameter servers serve on until the workers are done (`--online` servers do), within
`terminationGracePeriodSeconds` (the stop timeout and a margin). With the tfjob flavour the
replicas restart Always and the TFJob has no backoff limit.
"""

import dataclasses
import json
import os
import re
import secrets

import yaml

from psflow import settings

PORT = 2222
# Every pod serves Prometheus metrics here (a named port, with the prometheus.io/ annotations
# that Prometheus's pod discovery reads); nothing runs for them until a scrape comes.
METRICS_PORT = 9090
SCRAPE_ANNOTATIONS = {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
                      "prometheus.io/path": "/metrics"}
APP_DIR = "/app"
CHECKPOINT_MOUNT = "/checkpoints"
TLS_MOUNT = "/etc/psflow/tls"
FLAVORS = ("jobs", "tfjob")
# The chain master's pods and Job (or StatefulSet) are `<name>-chain`: a StatefulSet's name
# stays under 53 characters, as its pods' controller-revision-hash label needs.
CHAIN_MASTER = "chain"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclasses.dataclass
class K8sSpec:
    """What the manifests deploy, beside the job's JobSpec (workers, ps, mode, script)."""

    image: str = "psflow:latest"
    namespace: str = "default"
    name: str = "psflow"
    flavor: str = "jobs"
    cpu: str = ""
    memory: str = ""
    cpu_limit: str = ""
    memory_limit: str = ""
    restart_policy: str = "OnFailure"
    checkpoint_pvc: str = ""
    tls_secret: str = ""
    ttl_seconds: int = 3600
    token: str = ""

    def validate(self):
        for what in ("namespace", "name"):
            value = getattr(self, what)
            if not _NAME.match(value) or len(value) > 40:
                raise ValueError(f"--{what} must be a DNS label of at most 40 characters "
                                 f"(lowercase letters, digits, '-'), got {value!r}")
        if self.flavor not in FLAVORS:
            raise ValueError(f"unknown --k8s-flavor {self.flavor!r}; one of {', '.join(FLAVORS)}")
        if self.restart_policy not in ("OnFailure", "Never"):
            raise ValueError(f"restart policy must be OnFailure or Never, got "
                             f"{self.restart_policy!r}")
        if not self.image or any(c.isspace() for c in self.image):
            raise ValueError(f"--image must be an image reference, got {self.image!r}")
        if not isinstance(self.ttl_seconds, int) or self.ttl_seconds < 0:
            raise ValueError(f"ttl must be a whole number of seconds, got {self.ttl_seconds!r}")
        for what in ("checkpoint_pvc", "tls_secret"):
            value = getattr(self, what)
            if value and not _NAME.match(value):
                raise ValueError(f"--{what.replace('_', '-')} must be a Kubernetes name, got "
                                 f"{value!r}")


def _script_path(script):
    """Where the script is in the image: the image holds the project's directory at /app."""
    relative = os.path.relpath(os.path.abspath(script), os.getcwd())
    if relative.startswith(".."):
        raise ValueError(f"the script {script} must be inside the directory the image is "
                         f"built from ({os.getcwd()})")
    return f"{APP_DIR}/{relative.replace(os.sep, '/')}"


def _resources(k8s):
    requests = {k: v for k, v in (("cpu", k8s.cpu), ("memory", k8s.memory)) if v}
    limits = {k: v for k, v in (("cpu", k8s.cpu_limit), ("memory", k8s.memory_limit)) if v}
    out = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _address(k8s, role, index):
    return f"{k8s.name}-{role}-{index}.{k8s.name}.{k8s.namespace}.svc.cluster.local:{PORT}"


INDEX_ENV = "JOB_COMPLETION_INDEX"
INDEX_ANNOTATION = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
# StatefulSets (online jobs) label each pod with its ordinal.
POD_INDEX_ENV = "POD_INDEX"
POD_INDEX_LABEL = "metadata.labels['apps.kubernetes.io/pod-index']"
# Seconds beyond the stop timeout that a stopping pod gets before it is killed.
STOP_MARGIN_S = 30


def _index_env(job):
    """(the variable holding a pod's index, where it comes from): a Job's completion index,
    or a StatefulSet's pod index (online jobs)."""
    return (POD_INDEX_ENV, POD_INDEX_LABEL) if job.online else (INDEX_ENV, INDEX_ANNOTATION)


def replica_address(k8s, shard, replica):
    """The address of replica `replica` of shard `shard` (--ps-replicas > 1): a pod of the
    shard's own Indexed Job (online: StatefulSet) `<name>-ps-<shard>`."""
    return _address(k8s, f"ps-{shard}", replica)


def chain_master_address(k8s):
    """The chain master's address (--ps-replicas > 1): the one pod of `<name>-chain`."""
    return _address(k8s, CHAIN_MASTER, 0)


def psflow_config(job, k8s):
    """TF_CONFIG's own "psflow" key of a job whose shards run as chains, as JobSpec.tf_config
    writes it: every shard's replicas (head first) and the chain master; None for R = 1."""
    if job.ps_replicas == 1:
        return None
    return {"ps_replicas": [[replica_address(k8s, s, r) for r in range(job.ps_replicas)]
                            for s in range(job.ps)],
            "chain_master": chain_master_address(k8s)}


def tf_config(job, k8s, role, index=None):
    """TF_CONFIG for every pod of `role` ("ps" or "worker"). Its task index is `index` if
    given, else `$(JOB_COMPLETION_INDEX)` (online: `$(POD_INDEX)`), which the kubelet replaces
    with the pod's index. With --ps-replicas R > 1, `ps` names each shard's first replica (the
    head at the start) and the "psflow" key every replica and the chain master."""
    replicated = psflow_config(job, k8s)
    ps = ([replicas[0] for replicas in replicated["ps_replicas"]] if replicated else
          [_address(k8s, "ps", i) for i in range(job.ps)])
    config = {"cluster": {"ps": ps,
                          "worker": [_address(k8s, "worker", i) for i in range(job.workers)]},
              "task": {"type": role, "index": -1 if index is None else index}}
    if replicated:
        config["psflow"] = replicated
    text = json.dumps(config, separators=(",", ":"))
    if index is not None:
        return text
    return text.replace('"index":-1', f'"index":$({_index_env(job)[0]})')


def _env(job, k8s, role, with_tf_config=True):
    env = []
    if with_tf_config:
        # Defined before TF_CONFIG, so that the kubelet expands it there.
        name, path = _index_env(job)
        env.append({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
        env.append({"name": "TF_CONFIG", "value": tf_config(job, k8s, role)})
    env += [{"name": settings.AUTH_TOKEN.name, "valueFrom": {"secretKeyRef": {
                "name": f"{k8s.name}-auth", "key": "token"}}},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
            {"name": settings.METRICS_PORT.name, "value": str(METRICS_PORT)},
            {"name": settings.METRICS_HOST.name, "value": "0.0.0.0"}]
    if role == "worker":
        env += [{"name": name, "value": value}
                for name, value in {**job.consistency.to_env(), **job.export_env()}.items()]
    elif job.online:
        env.append({"name": settings.ONLINE.name, "value": "1"})
    if k8s.checkpoint_pvc:
        env.append({"name": settings.CHECKPOINT_DIR.name, "value": CHECKPOINT_MOUNT})
    if k8s.tls_secret:
        env += [{"name": settings.TLS_CERT.name, "value": f"{TLS_MOUNT}/tls.crt"},
                {"name": settings.TLS_KEY.name, "value": f"{TLS_MOUNT}/tls.key"},
                {"name": settings.TLS_CA.name, "value": f"{TLS_MOUNT}/ca.crt"}]
    return env


def ps_command(job, *flags):
    """The command of a parameter-server pod, with `flags` after the address it serves."""
    # -P: the image's working directory holds psflow's source tree, which must not shadow the
    # installed package.
    command = ["python", "-P", "-m", "psflow.ps", "--host", "0.0.0.0", "--port", str(PORT),
               *flags]
    if job.online:
        command += ["--online", "--stop-timeout", f"{job.stop_timeout:g}"]
    return command


def _container(job, k8s, role, name, with_tf_config=True):
    if role == "ps":
        command = ps_command(job)
    else:
        command = ["python", _script_path(job.script), *job.script_args]
    container = {
        "name": name,
        "image": k8s.image,
        "command": command,
        "env": _env(job, k8s, role, with_tf_config),
        "ports": [{"name": "tfjob-port" if k8s.flavor == "tfjob" else "grpc",
                   "containerPort": PORT},
                  {"name": "metrics", "containerPort": METRICS_PORT}],
        "securityContext": {"allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
    }
    resources = _resources(k8s)
    if resources:
        container["resources"] = resources
    if role == "ps":
        probe = {"grpc": {"port": PORT, "service": "psflow.ParameterServer"}}
        container["readinessProbe"] = dict(probe, periodSeconds=5, failureThreshold=3)
        container["livenessProbe"] = dict(probe, initialDelaySeconds=10, periodSeconds=10,
                                          failureThreshold=6)
    mounts = []
    if k8s.checkpoint_pvc:
        mounts.append({"name": "checkpoints", "mountPath": CHECKPOINT_MOUNT})
    if k8s.tls_secret:
        mounts.append({"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True})
    if mounts:
        container["volumeMounts"] = mounts
    return container


def _pod_spec(job, k8s, role, container_name="main", with_tf_config=True):
    spec = {
        "restartPolicy": "Always" if job.online else k8s.restart_policy,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
        "containers": [_container(job, k8s, role, container_name, with_tf_config)],
    }
    if k8s.flavor == "jobs" and not job.online:  # a StatefulSet names its pods' hosts itself
        spec["subdomain"] = k8s.name
    if job.online:
        spec["terminationGracePeriodSeconds"] = int(job.stop_timeout) + STOP_MARGIN_S
    volumes = []
    if k8s.checkpoint_pvc:
        volumes.append({"name": "checkpoints",
                        "persistentVolumeClaim": {"claimName": k8s.checkpoint_pvc}})
    if k8s.tls_secret:
        volumes.append({"name": "tls", "secret": {"secretName": k8s.tls_secret}})
    if volumes:
        spec["volumes"] = volumes
    return spec


def _labels(k8s, role=None):
    labels = {"app.kubernetes.io/name": "psflow", "psflow.io/job": k8s.name}
    if role:
        labels["psflow.io/role"] = role
    return labels


def _secret(k8s):
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": f"{k8s.name}-auth", "namespace": k8s.namespace,
                         "labels": _labels(k8s)},
            "type": "Opaque", "stringData": {"token": k8s.token}}


def template(job, k8s, role, labels=None):
    """The pod template of `role`'s pods (labels: `_labels(k8s, role)` unless given)."""
    return {"metadata": {"labels": labels or _labels(k8s, role),
                         "annotations": dict(SCRAPE_ANNOTATIONS)},
            "spec": _pod_spec(job, k8s, role)}


def indexed_job(k8s, name, pod_template, count, max_restarts):
    """An Indexed Job `name` of `count` pods, each named `<name>-<index>` in the Service."""
    spec = {
        "completionMode": "Indexed",
        "completions": count,
        "parallelism": count,
        "ttlSecondsAfterFinished": k8s.ttl_seconds,
        "template": pod_template,
    }
    if k8s.restart_policy == "Never":
        spec["backoffLimitPerIndex"] = max_restarts  # a new pod per failure, bounded per index
    else:
        # The container restarts in place (same pod, same address); the Job-wide bound
        # allows every index its restarts (per-index limits need restartPolicy Never).
        spec["backoffLimit"] = max_restarts * count
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": k8s.namespace,
                         "labels": dict(pod_template["metadata"]["labels"])},
            "spec": spec}


def stateful_set(k8s, name, pod_template, count):
    """An online job's pods `<name>-0`... (`count` of them), started together, restarted
    always; its selector is the template's labels, which no other StatefulSet's match."""
    labels = pod_template["metadata"]["labels"]
    return {"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": name, "namespace": k8s.namespace, "labels": dict(labels)},
            "spec": {"serviceName": k8s.name, "replicas": count,
                     "podManagementPolicy": "Parallel",
                     "selector": {"matchLabels": dict(labels)},
                     "template": pod_template}}


def manifests(job, k8s, max_restarts=3):
    """The list of manifests (dicts) for JobSpec `job` deployed as `k8s` describes."""
    k8s.validate()
    if job.online and k8s.restart_policy == "Never":
        raise ValueError("--online restarts every pod that stops (restartPolicy Always); it "
                         "does not go with --k8s-restart-policy Never")
    _check_replicas(job, k8s)
    if not k8s.token:
        k8s.token = secrets.token_urlsafe(32)
    if k8s.flavor == "tfjob":
        return [_secret(k8s), _tfjob(job, k8s, max_restarts)]
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": k8s.name, "namespace": k8s.namespace, "labels": _labels(k8s)},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                 "selector": _labels(k8s),
                 "ports": [{"name": "grpc", "port": PORT, "targetPort": PORT}]},
    }
    if job.ps_replicas > 1:
        from .k8s_replicas import chain_manifests
        servers = chain_manifests(job, k8s, max_restarts)
    elif job.online:
        servers = [stateful_set(k8s, f"{k8s.name}-ps", template(job, k8s, "ps"), job.ps)]
    else:
        servers = [indexed_job(k8s, f"{k8s.name}-ps", template(job, k8s, "ps"), job.ps,
                               max_restarts)]
    workers = template(job, k8s, "worker")
    if job.online:
        return [_secret(k8s), service, *servers,
                stateful_set(k8s, f"{k8s.name}-worker", workers, job.workers)]
    return [_secret(k8s), service, *servers,
            indexed_job(k8s, f"{k8s.name}-worker", workers, job.workers, max_restarts)]


def _check_replicas(job, k8s):
    replicas = job.ps_replicas
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
        raise ValueError(f"--ps-replicas must be a whole number >= 1, got {replicas!r}")
    if replicas == 1:
        return
    if k8s.flavor == "tfjob":
        raise ValueError("--ps-replicas > 1 needs --k8s-flavor jobs: a TFJob runs one pod per "
                         "parameter-server shard and no chain master")
    if k8s.tls_secret:
        raise ValueError("--ps-replicas > 1 does not go with --tls-secret: the chain master "
                         "serves plain gRPC, which clients given a CA cannot reach")


def _tfjob(job, k8s, max_restarts):
    def replica(role, count):
        return {"replicas": count,
                "restartPolicy": "Always" if job.online else k8s.restart_policy,
                "template": {"metadata": {"labels": _labels(k8s, role),
                                          "annotations": dict(SCRAPE_ANNOTATIONS)},
                             "spec": _pod_spec(job, k8s, role, container_name="tensorflow",
                                               with_tf_config=False)}}
    run_policy = {"cleanPodPolicy": "All", "ttlSecondsAfterFinished": k8s.ttl_seconds}
    if not job.online:  # an online job restarts its pods without bound
        run_policy["backoffLimit"] = max_restarts * (job.ps + job.workers)
    return {"apiVersion": "kubeflow.org/v1", "kind": "TFJob",
            "metadata": {"name": k8s.name, "namespace": k8s.namespace, "labels": _labels(k8s)},
            "spec": {"runPolicy": run_policy,
                     "tfReplicaSpecs": {"PS": replica("ps", job.ps),
                                        "Worker": replica("worker", job.workers)}}}


# -- YAML -------------------------------------------------------------------------------------
def to_yaml(documents):
    """The manifests as one YAML stream (documents separated by ---), in their keys' order."""
    return "---\n" + yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False,
                                         explicit_start=False, width=100)


def write(documents, directory):
    """One file per manifest in `directory`; returns their paths."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for k, doc in enumerate(documents):
        path = os.path.join(directory, f"{k:02d}-{doc['kind'].lower()}-"
                                       f"{doc['metadata']['name']}.yaml")
        with open(path, "w") as f:
            f.write(to_yaml([doc]))
        paths.append(path)
    return paths
