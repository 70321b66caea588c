"""Kubernetes manifests for psflow-serve: `psflow-serve --k8s --image IMAGE --model_name NAME
--model_base_path PATH` prints them (or writes them with --k8s-out) instead of serving.

- a Deployment of `--replicas` pods running psflow-serve with the gRPC (8500) and REST (8501)
  ports; a pod is ready only once the model has an available version (the gRPC health check
  of the model's name, SERVING from then on and NOT_SERVING again while stopping), and alive
  while its REST front answers the model's status;
- with `--pvc CLAIM`, the claim mounted read-only at /checkpoints, where `launch --k8s
  --checkpoint-pvc CLAIM` mounts it in the training pods: a path under /checkpoints names the
  same files in both, so the chief's exports are the server's versions;
- with `--batching_parameters_file`, a ConfigMap holding the file, mounted in the pods;
- a Service with both ports, in front of the ready pods.
"""

import os
import re
import sys

import yaml

from psflow.errors import InvalidArgumentError
from psflow.serving.batching_config import read_batching_parameters

# Where `launch --k8s --checkpoint-pvc` mounts the claim in the training pods (launcher/k8s.py;
# psflow-serve does not import the launcher): the same path names the same files in both.
CHECKPOINT_MOUNT = "/checkpoints"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
GRPC_PORT = 8500
REST_PORT = 8501
CONFIG_MOUNT = "/etc/psflow-serve"
BATCHING_FILE = "batching.config"


def add_arguments(parser):
    """The --k8s flags of psflow-serve."""
    kube = parser.add_argument_group(
        "kubernetes", "with --k8s, print (or write) the manifests that serve the model on a "
                      "cluster instead of serving it here")
    kube.add_argument("--k8s", action="store_true", help="generate Kubernetes manifests")
    kube.add_argument("--k8s-out", metavar="DIR", help="write one file per manifest to DIR")
    kube.add_argument("--image", default="", help="the image built from psflow's Dockerfile")
    kube.add_argument("--namespace", default="default")
    kube.add_argument("--name", default="",
                      help="the Deployment's and Service's name (default: psflow-serve-NAME)")
    kube.add_argument("--replicas", type=int, default=1, help="serving pods (default: 1)")
    kube.add_argument("--pvc", default="", metavar="CLAIM",
                      help="a PersistentVolumeClaim mounted read-only at /checkpoints, as "
                           "launch --checkpoint-pvc mounts it for training")
    kube.add_argument("--cpu", default="1", help="CPU request of a pod (default: 1)")
    kube.add_argument("--memory", default="1Gi", help="memory request of a pod (default: 1Gi)")
    kube.add_argument("--cpu-limit", default="", help="CPU limit of a pod")
    kube.add_argument("--memory-limit", default="", help="memory limit of a pod")


def _check(args):
    if not args.image or any(c.isspace() for c in args.image):
        raise InvalidArgumentError(f"--k8s needs --image, an image reference; got "
                                   f"{args.image!r}")
    if args.model_config_file or not args.model_base_path:
        raise InvalidArgumentError("--k8s serves one model: give --model_name and "
                                   "--model_base_path")
    if not os.path.isabs(args.model_base_path):
        raise InvalidArgumentError(f"--model_base_path must be a path in the pod, absolute; "
                                   f"got {args.model_base_path!r}")
    name = args.name or f"psflow-serve-{args.model_name}"
    for flag, value, longest in (("--name (or psflow-serve-MODEL_NAME)", name, 63),
                                 ("--namespace", args.namespace, 63), ("--pvc", args.pvc, 253)):
        if value and (not DNS_LABEL.match(value) or len(value) > longest):
            raise InvalidArgumentError(
                f"{flag} must be a DNS label of at most {longest} characters (lowercase "
                f"letters, digits, '-'), got {value!r}")
    inside = args.model_base_path.rstrip("/").startswith(CHECKPOINT_MOUNT + "/")
    if args.pvc and not inside:
        raise InvalidArgumentError(f"with --pvc the model base path must be under "
                                   f"{CHECKPOINT_MOUNT}, where the claim is mounted; got "
                                   f"{args.model_base_path!r}")
    if args.replicas < 1:
        raise InvalidArgumentError(f"--replicas must be at least 1, got {args.replicas}")


def _resources(args):
    resources = {"requests": {"cpu": args.cpu, "memory": args.memory}}
    limits = {k: v for k, v in (("cpu", args.cpu_limit), ("memory", args.memory_limit)) if v}
    if limits:
        resources["limits"] = limits
    return resources


def _command(args):
    command = ["python", "-P", "-m", "psflow.serving", f"--port={GRPC_PORT}",
               f"--rest_api_port={REST_PORT}", f"--model_name={args.model_name}",
               f"--model_base_path={args.model_base_path}",
               f"--file_system_poll_wait_seconds={args.file_system_poll_wait_seconds:g}",
               f"--shutdown_grace_seconds={args.shutdown_grace_seconds:g}"]
    if args.enable_batching:
        command.append("--enable_batching")
        if args.batching_parameters_file:
            command.append(f"--batching_parameters_file={CONFIG_MOUNT}/{BATCHING_FILE}")
    return command


def manifests(args, batching_text=None):
    """The manifests (dicts) serving the model the parsed psflow-serve `args` name;
    InvalidArgumentError for flags that cannot make a deployment. `batching_text` is the
    batching parameters file's content, if any."""
    _check(args)
    name = args.name or f"psflow-serve-{args.model_name}"

    def labels():  # a new dict each time: YAML would write a shared one as an anchor
        return {"app.kubernetes.io/name": "psflow-serve", "psflow.io/serve": name}

    def meta(suffix=""):
        return {"name": name + suffix, "namespace": args.namespace, "labels": labels()}
    container = {
        "name": "serve",
        "image": args.image,
        "command": _command(args),
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
        "ports": [{"name": "grpc", "containerPort": GRPC_PORT},
                  {"name": "http", "containerPort": REST_PORT}],
        "resources": _resources(args),
        # Ready once the model has a version AVAILABLE (loaded and warmed up), and no longer
        # while stopping, so the Service sends requests only to pods that can answer them.
        "readinessProbe": {"grpc": {"port": GRPC_PORT, "service": args.model_name},
                           "periodSeconds": 5, "failureThreshold": 2},
        # Alive while the REST front answers the model's status, loaded or not: a large
        # version loading slowly is not a reason to restart the pod.
        "livenessProbe": {"httpGet": {"path": f"/v1/models/{args.model_name}",
                                      "port": REST_PORT},
                          "initialDelaySeconds": 10, "periodSeconds": 10,
                          "failureThreshold": 6},
        "securityContext": {"allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
    }
    mounts, volumes = [], []
    if args.pvc:
        mounts.append({"name": "models", "mountPath": CHECKPOINT_MOUNT, "readOnly": True})
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": args.pvc,
                                                                    "readOnly": True}})
    documents = []
    if batching_text is not None:
        config = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": meta("-config"),
                  "data": {BATCHING_FILE: batching_text}}
        documents.append(config)
        mounts.append({"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True})
        volumes.append({"name": "config", "configMap": {"name": f"{name}-config"}})
    if mounts:
        container["volumeMounts"] = mounts
    pod = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
        # SIGTERM lets the requests in flight finish first.
        "terminationGracePeriodSeconds": int(args.shutdown_grace_seconds) + 5,
        "containers": [container],
    }
    if volumes:
        pod["volumes"] = volumes
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(),
        "spec": {"replicas": args.replicas, "selector": {"matchLabels": labels()},
                 # A new pod serves before an old one stops.
                 "strategy": {"type": "RollingUpdate",
                              "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                 "template": {"metadata": {"labels": labels()}, "spec": pod}},
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": meta(),
        "spec": {"selector": labels(),
                 "ports": [{"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc"},
                           {"name": "http", "port": REST_PORT, "targetPort": "http"}]},
    }
    return documents + [deployment, service]


def to_yaml(documents):
    """The manifests as one YAML stream, in their keys' order."""
    return "---\n" + yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False,
                                         width=100)


def write(documents, directory):
    """One file per manifest in `directory`, named as `launch --k8s-out` names them; returns
    their paths."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for k, doc in enumerate(documents):
        path = os.path.join(directory, f"{k:02d}-{doc['kind'].lower()}-"
                                       f"{doc['metadata']['name']}.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(to_yaml([doc]))
        paths.append(path)
    return paths


def main(args, out=None):
    """`psflow-serve --k8s`: prints the manifests (or writes them to --k8s-out); returns the
    exit code. InvalidArgumentError for bad flags."""
    batching_text = None
    if args.batching_parameters_file:
        if not args.enable_batching:
            raise InvalidArgumentError("--batching_parameters_file goes with --enable_batching")
        # Checked now rather than when the pods start.
        read_batching_parameters(args.batching_parameters_file)
        with open(args.batching_parameters_file, encoding="utf-8") as f:
            batching_text = f.read()
    documents = manifests(args, batching_text)
    out = out or sys.stdout
    if args.k8s_out:
        out.writelines(f"{path}\n" for path in write(documents, args.k8s_out))
    else:
        out.write(to_yaml(documents))
    return 0
