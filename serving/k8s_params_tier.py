"""The live-parameter part of `psflow-serve --k8s`: with `--follow` (the training job's
parameter servers, e.g. `launch --k8s --name ctr`'s ctr-ps-0.ctr.NAMESPACE.svc.cluster.local:2222)
the serving pods read the rows and variables the job is training instead of those frozen in
the export.

- Without `--serving-replicas`, every serving pod keeps a copy of every shard itself
  (`--follow` on its command line).
- With `--serving-replicas R`, a serving parameter tier: per training shard k, a StatefulSet
  NAME-params-k of R psflow-params pods, each following shard k, behind a headless Service of
  the same name, so that each pod has a stable DNS name. The serving pods read rows from
  them at request time (`--params_shard`, one per shard, listing its R pods), passing over a
  dead pod within the request's deadline. A params pod is ready once it holds its shard's
  first snapshot.
- `--auth-secret`: the training job's token Secret (NAME-auth for `launch --k8s --name NAME`),
  given to every pod that talks to the job or to the tier as PSFLOW_AUTH_TOKEN.
"""

from psflow import settings
from psflow.errors import InvalidArgumentError

PARAMS_PORT = 2300


def add_arguments(kube):
    kube.add_argument("--serving-replicas", type=int, default=0, metavar="R",
                      help="with --follow: a serving parameter tier of R psflow-params pods "
                           "per training shard, read by the serving pods (default 0: each "
                           "serving pod keeps its own copy)")
    kube.add_argument("--auth-secret", default="", metavar="SECRET",
                      help="the training job's token Secret (NAME-auth for launch --k8s "
                           "--name NAME), for the pods that read from it")
    kube.add_argument("--params-cpu", default="1", help="CPU request of a psflow-params pod")
    kube.add_argument("--params-memory", default="2Gi",
                      help="memory request of a psflow-params pod (it holds a shard's rows)")


def token_env(args):
    """The env entries giving a pod the job's token, if there is a Secret."""
    if not args.auth_secret:
        return []
    return [{"name": settings.AUTH_TOKEN.name,
             "valueFrom": {"secretKeyRef": {"name": args.auth_secret, "key": "token"}}}]


def shards_of(args):
    """The followed parameter servers' addresses; InvalidArgumentError for bad ones."""
    shards = [a for a in args.follow.split(",") if a]
    for address in shards:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidArgumentError(f"--follow takes HOST:PORT addresses, got {address!r}")
    return shards


def check(args):
    if args.serving_replicas < 0:
        raise InvalidArgumentError(f"--serving-replicas must be at least 0, got "
                                   f"{args.serving_replicas}")
    if args.serving_replicas and not args.follow:
        raise InvalidArgumentError("--serving-replicas makes a tier that follows the training "
                                   "job: give --follow with its parameter servers")
    if args.follow and args.params_shard:
        raise InvalidArgumentError("give either --follow or --params_shard")


def tier(args, name, namespace):
    """(manifests of the tier, the serving command's flags that read from it)."""
    check(args)
    if not args.follow:
        return [], [f"--params_shard={s}" for s in args.params_shard]
    shards = shards_of(args)
    if not args.serving_replicas:
        return [], [f"--follow={','.join(shards)}"]
    documents, flags = [], []
    for k, address in enumerate(shards):
        set_name = f"{name}-params-{k}"
        if len(set_name) > 52:  # room for the pods' "-<ordinal>" and hash labels
            raise InvalidArgumentError(f"the tier's StatefulSet name {set_name!r} is too long; "
                                       "give a shorter --name")
        # Labels of its own: the serving Service must not select a params pod.
        own = {"app.kubernetes.io/name": "psflow-params", "psflow.io/serve": name,
               "psflow.io/params-shard": str(k)}
        meta = {"name": set_name, "namespace": namespace, "labels": own}
        container = {
            "name": "params",
            "image": args.image,
            "command": ["python", "-P", "-m", "psflow.serving.params_server",
                        f"--follow={address}", f"--port={PARAMS_PORT}"],
            "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}] + token_env(args),
            "ports": [{"name": "grpc", "containerPort": PARAMS_PORT}],
            "resources": {"requests": {"cpu": args.params_cpu, "memory": args.params_memory}},
            # Ready once the shard's first snapshot is in; alive while it listens.
            "readinessProbe": {"grpc": {"port": PARAMS_PORT, "service": "psflow.ParameterServer"},
                               "periodSeconds": 2, "failureThreshold": 2},
            "livenessProbe": {"tcpSocket": {"port": PARAMS_PORT}, "initialDelaySeconds": 10,
                              "periodSeconds": 10, "failureThreshold": 6},
            "securityContext": {"allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]}},
        }
        documents.append({
            "apiVersion": "v1", "kind": "Service", "metadata": dict(meta, labels=dict(own)),
            "spec": {"clusterIP": "None", "selector": dict(own),
                     "ports": [{"name": "grpc", "port": PARAMS_PORT, "targetPort": "grpc"}]}})
        documents.append({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": dict(meta, labels=dict(own)),
            "spec": {"serviceName": set_name, "replicas": args.serving_replicas,
                     # Replicas are alike: start and replace them all at once.
                     "podManagementPolicy": "Parallel",
                     "selector": {"matchLabels": dict(own)},
                     "template": {"metadata": {"labels": dict(own)},
                                  "spec": {"securityContext": {"runAsNonRoot": True,
                                                               "runAsUser": 10001},
                                           "containers": [container]}}}})
        pods = [f"{set_name}-{r}.{set_name}.{namespace}.svc.cluster.local:{PARAMS_PORT}"
                for r in range(args.serving_replicas)]
        flags.append(f"--params_shard={','.join(pods)}")
    return documents, flags
