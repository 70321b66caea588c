"""Kubernetes manifests for psflow-serve: `psflow-serve --k8s --image IMAGE --model_name NAME
--model_base_path PATH` (or `--model_config_file FILE` for several models) prints them (or
writes them with --k8s-out) instead of serving.

- a Deployment of `--replicas` pods running psflow-serve with the gRPC (--port, 8500) and REST
  (--rest_api_port, 8501 unless given) ports; a pod is ready only once every model it serves
  has an available version (the gRPC health check of the model's name, or of the whole server
  for a model config file: SERVING from then on and NOT_SERVING again while stopping), and
  alive while its REST front answers; Prometheus scrape annotations point at the REST port's
  metrics;
- with `--pvc CLAIM`, the claim mounted read-only at /checkpoints, where `launch --k8s
  --checkpoint-pvc CLAIM` mounts it in the training pods: a path under /checkpoints names the
  same files in both, so the chief's exports are the server's versions;
- the files the server reads (--model_config_file, --traffic_split_file,
  --batching_parameters_file) in a ConfigMap mounted in the pods at /etc/psflow-serve, each
  checked here first;
- a Service with both ports, in front of the ready pods.
"""

import os
import re
import sys

import yaml
from google.protobuf import text_format

from psflow.errors import InvalidArgumentError
from psflow.proto.tfserving import model_server_config_pb2
from psflow.serving import k8s_params_tier
from psflow.serving.batching_config import parse_batching_parameters
from psflow.serving.model_config import parse_model_config
from psflow.serving.rest_api import METRICS_PATH
from psflow.serving.traffic_split import parse_traffic_split

# Where `launch --k8s --checkpoint-pvc` mounts the claim in the training pods (launcher/k8s.py;
# psflow-serve does not import the launcher): the same path names the same files in both.
CHECKPOINT_MOUNT = "/checkpoints"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
GRPC_PORT = 8500
REST_PORT = 8501
CONFIG_MOUNT = "/etc/psflow-serve"
MODELS_FILE = "models.config"
SPLIT_FILE = "traffic_split.yaml"
BATCHING_FILE = "batching.config"


def add_arguments(parser):
    """The --k8s flags of psflow-serve."""
    kube = parser.add_argument_group(
        "kubernetes", "with --k8s, print (or write) the manifests that serve the models on a "
                      "cluster instead of serving them here")
    kube.add_argument("--k8s", action="store_true", help="generate Kubernetes manifests")
    kube.add_argument("--k8s-out", metavar="DIR", help="write one file per manifest to DIR")
    kube.add_argument("--image", default="", help="the image built from psflow's Dockerfile")
    kube.add_argument("--namespace", default="default")
    kube.add_argument("--name", default="",
                      help="the Deployment's and Service's name (default: psflow-serve-NAME, "
                           "or psflow-serve with --model_config_file)")
    kube.add_argument("--replicas", type=int, default=1, help="serving pods (default: 1)")
    kube.add_argument("--pvc", default="", metavar="CLAIM",
                      help="a PersistentVolumeClaim mounted read-only at /checkpoints, as "
                           "launch --checkpoint-pvc mounts it for training")
    kube.add_argument("--cpu", default="1", help="CPU request of a pod (default: 1)")
    kube.add_argument("--memory", default="1Gi", help="memory request of a pod (default: 1Gi)")
    kube.add_argument("--cpu-limit", default="", help="CPU limit of a pod")
    kube.add_argument("--memory-limit", default="", help="memory limit of a pod")
    k8s_params_tier.add_arguments(kube)


def _name(args):
    if args.name:
        return args.name
    return "psflow-serve" if args.model_config_file else f"psflow-serve-{args.model_name}"


def _ports(args):
    """(gRPC port, REST port) of the pods: the REST port always serves, for the metrics and
    the liveness probe."""
    rest = args.rest_api_port or REST_PORT
    for flag, port in (("--port", args.port), ("--rest_api_port", rest)):
        if not 0 < port < 65536:
            raise InvalidArgumentError(f"with --k8s, {flag} must be a port from 1 to 65535, "
                                       f"got {port}")
    if args.port == rest:
        raise InvalidArgumentError(f"--port and --rest_api_port are both {rest}")
    return args.port, rest


def _read(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"cannot read the {what} {path}: {exc}") from None


def config_files(args):
    """{name in the ConfigMap: text} of the files the pods read, each checked as psflow-serve
    checks it at start, so a bad one fails now rather than in every pod."""
    files = {}
    labels = {args.model_name: {}}
    if args.model_config_file:
        text = _read(args.model_config_file, "model config")
        labels = {m.name: m.labels for m in parse_model_config(text, args.model_config_file)}
        files[MODELS_FILE] = text
    if args.traffic_split_file:
        text = _read(args.traffic_split_file, "traffic split")
        parse_traffic_split(text, args.traffic_split_file, labels.get)
        files[SPLIT_FILE] = text
    if args.batching_parameters_file:
        if not args.enable_batching:
            raise InvalidArgumentError("--batching_parameters_file goes with --enable_batching")
        text = _read(args.batching_parameters_file, "batching parameters file")
        parse_batching_parameters(text, args.batching_parameters_file)
        files[BATCHING_FILE] = text
    return files


def _base_paths(args, files):
    """{model: base path as written}: paths in the pod, whatever this machine's directory."""
    if not args.model_config_file:
        return {args.model_name: args.model_base_path}
    message = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(files[MODELS_FILE], message)
    return {c.name: c.base_path for c in message.model_config_list.config}


def _check(args):
    if not args.image or any(c.isspace() for c in args.image):
        raise InvalidArgumentError(f"--k8s needs --image, an image reference; got "
                                   f"{args.image!r}")
    if args.model_config_file and args.model_base_path:
        raise InvalidArgumentError("give either --model_config_file or --model_base_path")
    if not args.model_config_file and not args.model_base_path:
        raise InvalidArgumentError("--k8s serves --model_name from --model_base_path, or the "
                                   "models of --model_config_file: give one")
    name = _name(args)
    for flag, value, longest in (("--name (or psflow-serve-MODEL_NAME)", name, 63),
                                 ("--namespace", args.namespace, 63), ("--pvc", args.pvc, 253)):
        if value and (not DNS_LABEL.match(value) or len(value) > longest):
            raise InvalidArgumentError(
                f"{flag} must be a DNS label of at most {longest} characters (lowercase "
                f"letters, digits, '-'), got {value!r}")
    if args.replicas < 1:
        raise InvalidArgumentError(f"--replicas must be at least 1, got {args.replicas}")


def _check_base_paths(args, files):
    for model, path in _base_paths(args, files).items():
        where = (f"model '{model}': its base path" if args.model_config_file
                 else "--model_base_path")
        if not os.path.isabs(path):
            raise InvalidArgumentError(f"{where} must be a path in the pod, absolute; got "
                                       f"{path!r}")
        if args.pvc and not path.rstrip("/").startswith(CHECKPOINT_MOUNT + "/"):
            raise InvalidArgumentError(f"with --pvc, {where} must be under {CHECKPOINT_MOUNT}, "
                                       f"where the claim is mounted; got {path!r}")


def _resources(args):
    resources = {"requests": {"cpu": args.cpu, "memory": args.memory}}
    limits = {k: v for k, v in (("cpu", args.cpu_limit), ("memory", args.memory_limit)) if v}
    if limits:
        resources["limits"] = limits
    return resources


def _command(args, files, grpc_port, rest_port):
    command = ["python", "-P", "-m", "psflow.serving", f"--port={grpc_port}",
               f"--rest_api_port={rest_port}"]
    if MODELS_FILE in files:
        command.append(f"--model_config_file={CONFIG_MOUNT}/{MODELS_FILE}")
        if args.model_config_file_poll_wait_seconds > 0:
            command.append("--model_config_file_poll_wait_seconds="
                           f"{args.model_config_file_poll_wait_seconds:g}")
    else:
        command += [f"--model_name={args.model_name}",
                    f"--model_base_path={args.model_base_path}"]
    command += [f"--file_system_poll_wait_seconds={args.file_system_poll_wait_seconds:g}",
                f"--max_num_load_retries={args.max_num_load_retries}",
                f"--load_retry_interval_micros={args.load_retry_interval_micros}",
                f"--shutdown_grace_seconds={args.shutdown_grace_seconds:g}"]
    if SPLIT_FILE in files:
        command.append(f"--traffic_split_file={CONFIG_MOUNT}/{SPLIT_FILE}")
    if args.enable_batching:
        command.append("--enable_batching")
        if BATCHING_FILE in files:
            command.append(f"--batching_parameters_file={CONFIG_MOUNT}/{BATCHING_FILE}")
    return command


def _probes(args, grpc_port, rest_port):
    """(readiness, liveness) of a serving container."""
    # Ready once every model has a version AVAILABLE (loaded and warmed up), and no longer
    # while stopping, so the Service sends requests only to pods that can answer them: the
    # model's own health service, or the server's ("") that waits for every model.
    ready = {"port": grpc_port}
    if not args.model_config_file:
        ready["service"] = args.model_name
    readiness = {"grpc": ready, "periodSeconds": 5, "failureThreshold": 2}
    # Alive while the REST front answers, loaded or not: a large version loading slowly is
    # not a reason to restart the pod. With a config file a model may come and go, so the
    # metrics route answers rather than a model's status.
    path = METRICS_PATH if args.model_config_file else f"/v1/models/{args.model_name}"
    liveness = {"httpGet": {"path": path, "port": rest_port},
                "initialDelaySeconds": 10, "periodSeconds": 10, "failureThreshold": 6}
    return readiness, liveness


def manifests(args):
    """The manifests (dicts) serving the models the parsed psflow-serve `args` name;
    InvalidArgumentError for flags or files that cannot make a deployment."""
    _check(args)
    files = config_files(args)
    _check_base_paths(args, files)
    grpc_port, rest_port = _ports(args)
    name = _name(args)

    def labels():  # a new dict each time: YAML would write a shared one as an anchor
        return {"app.kubernetes.io/name": "psflow-serve", "psflow.io/serve": name}

    def meta(suffix=""):
        return {"name": name + suffix, "namespace": args.namespace, "labels": labels()}
    readiness, liveness = _probes(args, grpc_port, rest_port)
    tier, live_flags = k8s_params_tier.tier(args, name, args.namespace)
    container = {
        "name": "serve",
        "image": args.image,
        "command": _command(args, files, grpc_port, rest_port) + live_flags,
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}] + k8s_params_tier.token_env(args),
        "ports": [{"name": "grpc", "containerPort": grpc_port},
                  {"name": "http", "containerPort": rest_port}],
        "resources": _resources(args),
        "readinessProbe": readiness,
        "livenessProbe": liveness,
        "securityContext": {"allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
    }
    mounts, volumes = [], []
    if args.pvc:
        mounts.append({"name": "models", "mountPath": CHECKPOINT_MOUNT, "readOnly": True})
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": args.pvc,
                                                                    "readOnly": True}})
    documents = []
    if files:
        # Mounted whole (no subPath), so an applied change reaches the running pods: the
        # traffic split and, with --model_config_file_poll_wait_seconds, the models are
        # re-read while serving.
        documents.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("-config"),
                          "data": files})
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
    scrape = {"prometheus.io/scrape": "true", "prometheus.io/port": str(rest_port),
              "prometheus.io/path": METRICS_PATH}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(),
        "spec": {"replicas": args.replicas, "selector": {"matchLabels": labels()},
                 # A new pod serves before an old one stops.
                 "strategy": {"type": "RollingUpdate",
                              "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                 "template": {"metadata": {"labels": labels(), "annotations": scrape},
                              "spec": pod}},
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": meta(),
        "spec": {"selector": labels(),
                 "ports": [{"name": "grpc", "port": grpc_port, "targetPort": "grpc"},
                           {"name": "http", "port": rest_port, "targetPort": "http"}]},
    }
    return documents + tier + [deployment, service]


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
    exit code. InvalidArgumentError for bad flags or files."""
    documents = manifests(args)
    out = out or sys.stdout
    if args.k8s_out:
        out.writelines(f"{path}\n" for path in write(documents, args.k8s_out))
    else:
        out.write(to_yaml(documents))
    return 0
