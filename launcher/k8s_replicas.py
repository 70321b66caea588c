"""Kubernetes manifests for the parameter servers of a job whose shards run as chains of R > 1
replicas (`launch --k8s --ps-replicas R`; see docs/replication.md and docs/kubernetes.md).

- Each shard is an Indexed Job of its own, `<name>-ps-<s>`, of R pods. An Indexed Job names its
  pods' hosts `<job>-<index>`, so replica r of shard s is
  `<name>-ps-<s>-<r>.<name>.<namespace>.svc.cluster.local:2222`, and a replica that restarts
  (in place with OnFailure, as a new pod of the same index with Never) keeps that name and
  re-joins its chain under it (`--join`). The shard is written in the command; the replica's
  own name takes its completion index through the kubelet's `$(JOB_COMPLETION_INDEX)`
  expansion. (One Job of M x R pods would have to compute the shard and the replica from a
  single index, which a container's command cannot do without a shell.)
- The chain master is an Indexed Job of one pod, `<name>-chain` (host `<name>-chain-0`), run
  with `--exit-after-silence`: once the workers are done the replicas exit, and when no
  replica has heartbeated for that long the master exits 0, so its Job completes with the
  others and `ttlSecondsAfterFinished` removes it. A Deployment would restart a master that
  exits and never complete.
- Online jobs never complete: each shard is a StatefulSet `<name>-ps-<s>` of R pods (the index
  from `$(POD_INDEX)`) and the master a StatefulSet of one, `<name>-chain`, without
  `--exit-after-silence`; every pod restarts always. The names are the same.

The workers' TF_CONFIG names each shard's replica 0 (its head at the start) in `ps`, and every
replica and the master in its "psflow" key (`k8s.tf_config`).
"""

from psflow import settings
from .k8s import (
    CHAIN_MASTER,
    PORT,
    _index_env,
    _labels,
    _pod_spec,
    chain_master_address,
    indexed_job,
    ps_command,
    replica_address,
    stateful_set,
    template,
    tf_config,
)

# A finished job's chain master exits 0 once no replica has heartbeated for this long.
MASTER_SILENCE_S = 30
SHARD_LABEL = "psflow.io/shard"
MASTER_ROLE = "chain-master"


def chain_flags(job, k8s):
    """The chain master's `--chain SHARD=HOST:PORT,...` flags: each shard's replicas, head
    first."""
    flags = []
    for s in range(job.ps):
        replicas = ",".join(replica_address(k8s, s, r) for r in range(job.ps_replicas))
        flags += ["--chain", f"{s}={replicas}"]
    return flags


def master_command(job, k8s):
    """The chain master's command."""
    command = ["python", "-P", "-m", "psflow.ps.chain_master", *chain_flags(job, k8s),
               "--host", "0.0.0.0", "--port", str(PORT)]
    if not job.online:  # an online job's master serves until the job is deleted
        command += ["--exit-after-silence", str(MASTER_SILENCE_S)]
    return command


def replica_command(job, k8s, shard):
    """The command of every replica of `shard`; the kubelet puts the pod's index into its
    --advertise-address."""
    own_index = f"$({_index_env(job)[0]})"
    return ps_command(job, "--task-index", str(shard), "--num-workers", str(job.workers),
                      "--chain-master", chain_master_address(k8s),
                      "--advertise-address", replica_address(k8s, shard, own_index), "--join")


def _replica_template(job, k8s, shard):
    pod = template(job, k8s, "ps", labels={**_labels(k8s, "ps"), SHARD_LABEL: str(shard)})
    container = pod["spec"]["containers"][0]
    container["command"] = replica_command(job, k8s, shard)
    for item in container["env"]:
        if item["name"] == "TF_CONFIG":  # its task is the shard, whichever replica it is
            item["value"] = tf_config(job, k8s, "ps", index=shard)
    return pod


def _master_template(job, k8s):
    """The master's pod: the job's image, token, restart policy and resources; it serves no
    metrics, writes no checkpoints and has no probes (a master restarted by a failing probe
    would start its chains over)."""
    spec = _pod_spec(job, k8s, MASTER_ROLE, with_tf_config=False)
    spec.pop("volumes", None)
    container = spec["containers"][0]
    container.pop("volumeMounts", None)
    container["command"] = master_command(job, k8s)
    container["env"] = [item for item in container["env"]
                        if item["name"] in (settings.AUTH_TOKEN.name, "PYTHONUNBUFFERED")]
    container["ports"] = [port for port in container["ports"] if port["containerPort"] == PORT]
    return {"metadata": {"labels": _labels(k8s, MASTER_ROLE)}, "spec": spec}


def chain_manifests(job, k8s, max_restarts):
    """The chain master's Job and one Job per shard (online: StatefulSets), in that order."""
    master_name = f"{k8s.name}-{CHAIN_MASTER}"
    shards = [(f"{k8s.name}-ps-{s}", _replica_template(job, k8s, s)) for s in range(job.ps)]
    if job.online:
        return [stateful_set(k8s, master_name, _master_template(job, k8s), 1),
                *(stateful_set(k8s, name, pod, job.ps_replicas) for name, pod in shards)]
    return [indexed_job(k8s, master_name, _master_template(job, k8s), 1, max_restarts),
            *(indexed_job(k8s, name, pod, job.ps_replicas, max_restarts)
              for name, pod in shards)]
