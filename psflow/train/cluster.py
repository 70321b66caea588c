"""The cluster description: `ClusterSpec` and TensorFlow's `TF_CONFIG` environment variable.

`TF_CONFIG` is TensorFlow's JSON format, so a job runs unchanged under anything that sets it
(psflow's launcher and manifests, Kubeflow's TFJob):
`{"cluster": {"ps": ["host:port", ...], "worker": [...]}, "task": {"type": "worker", "index": 0}}`
"""

import json
import os


class ClusterSpec:
    """Named jobs ("ps", "worker", "chief") and the addresses of their tasks."""

    def __init__(self, cluster):
        if isinstance(cluster, ClusterSpec):
            cluster = cluster.as_dict()
        if not isinstance(cluster, dict):
            raise TypeError(f"ClusterSpec takes a dict of job name -> list of addresses, got "
                            f"{type(cluster).__name__}")
        self._jobs = {}
        for job, tasks in cluster.items():
            if isinstance(tasks, dict):  # TF also allows {index: address}
                tasks = [tasks[i] for i in sorted(tasks)]
            if not isinstance(tasks, (list, tuple)) or not all(isinstance(t, str) for t in tasks):
                raise ValueError(f"cluster job {job!r} must list its task addresses as strings, "
                                 f"got {tasks!r}")
            self._jobs[str(job)] = list(tasks)

    @property
    def jobs(self):
        return list(self._jobs)

    def job_tasks(self, job):
        try:
            return list(self._jobs[job])
        except KeyError:
            raise ValueError(f"no job {job!r} in the cluster (jobs: {', '.join(self._jobs)})") \
                from None

    def num_tasks(self, job):
        return len(self._jobs.get(job, ()))

    def task_address(self, job, index):
        tasks = self.job_tasks(job)
        if not 0 <= index < len(tasks):
            raise ValueError(f"job {job!r} has {len(tasks)} tasks; there is no task {index}")
        return tasks[index]

    def as_dict(self):
        return {job: list(tasks) for job, tasks in self._jobs.items()}

    def __eq__(self, other):
        return isinstance(other, ClusterSpec) and self._jobs == other._jobs

    def __repr__(self):
        return f"ClusterSpec({self._jobs!r})"


class TaskConfig:
    """This process's place in the cluster, as read from `TF_CONFIG`."""

    def __init__(self, cluster, task_type, task_index, chain_master=None):
        """`chain_master`: the address of the chain master of a job whose shards run as chains
        of replicas (TF_CONFIG's "psflow": {"chain_master": ...}), or None."""
        self.cluster = cluster
        self.task_type = task_type
        self.task_index = task_index
        self.chain_master = chain_master

    @property
    def num_workers(self):
        """Workers of the job; a "chief" job (TFJob's) counts as worker 0."""
        return self.cluster.num_tasks("chief") + self.cluster.num_tasks("worker")

    @property
    def worker_index(self):
        """This task's index among all workers, the chief first."""
        if self.task_type == "chief":
            return 0
        return self.cluster.num_tasks("chief") + self.task_index

    @property
    def is_chief(self):
        return self.worker_index == 0 and self.task_type in ("chief", "worker")

    @property
    def ps_addresses(self):
        return self.cluster.job_tasks("ps") if "ps" in self.cluster.jobs else []


def task_config_from_env(environ=None):
    """The TaskConfig `TF_CONFIG` describes, or None when it is unset or has no cluster.
    A malformed `TF_CONFIG` raises ValueError saying what is wrong."""
    environ = os.environ if environ is None else environ
    raw = environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"TF_CONFIG is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ValueError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    cluster = config.get("cluster") or {}
    if not cluster:
        return None
    task = config.get("task") or {}
    task_type = task.get("type")
    task_index = task.get("index")
    if task_index is None:
        # A Kubernetes Indexed Job gives every pod the same TF_CONFIG and its own index.
        raw_index = environ.get("JOB_COMPLETION_INDEX", "0")
        try:
            task_index = int(raw_index)
        except ValueError:
            raise ValueError(f"JOB_COMPLETION_INDEX={raw_index!r} is not an index") from None
    if task_type not in cluster:
        raise ValueError(f"TF_CONFIG task type {task_type!r} is not a job of the cluster "
                         f"({', '.join(cluster)})")
    if not isinstance(task_index, int) or not 0 <= task_index < len(cluster[task_type]):
        raise ValueError(f"TF_CONFIG task index {task_index!r} is out of range for job "
                         f"{task_type!r} with {len(cluster[task_type])} tasks")
    return TaskConfig(ClusterSpec(cluster), task_type, task_index, _chain_master(config))


def _chain_master(config):
    """The chain master's address in TF_CONFIG's own "psflow" key (beside the cluster, so a
    plain TF_CONFIG stays valid), or None; ValueError naming a malformed one."""
    extra = config.get("psflow") or {}
    if not isinstance(extra, dict):
        raise ValueError("TF_CONFIG's 'psflow' must be a JSON object")
    master = extra.get("chain_master")
    if master is not None and (not isinstance(master, str) or ":" not in master):
        raise ValueError(f"TF_CONFIG psflow.chain_master {master!r} is not a host:port address")
    return master or None


def replica_device_setter(ps_tasks=0, ps_device="/job:ps", worker_device="/job:worker",
                          cluster=None, **unused):
    """Accepted for TF1 compatibility: returns None, which `psflow.device` ignores. Variables
    are placed on the parameter servers automatically, balanced by size."""
    return None
