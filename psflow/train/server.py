"""`tf.train.Server` as TF1's distributed scripts use it:

    cluster = tf.train.ClusterSpec({"ps": ps_hosts, "worker": worker_hosts})
    server = tf.train.Server(cluster, job_name=FLAGS.job_name, task_index=FLAGS.task_index)
    if FLAGS.job_name == "ps":
        server.join()              # serves as a psflow parameter server until the job is done
    else:
        ...build the graph...
        with tf.train.MonitoredTrainingSession(master=server.target, ...) as sess:  # or
        sess = tf.Session(server.target)                                         # or Supervisor

A worker's server listens on nothing (psflow's workers call the parameter servers, never each
other); its `target` names the cluster and the task, and a session given that target trains on
the cluster's parameter servers. A ps task's `join()` serves that shard in this process, with
the same lifecycle as `python -m psflow.ps`: it returns once every worker has finished.
"""

import ipaddress
import socket

from .. import settings
from ..parent import parent_from_env
from .cluster import ClusterSpec, TaskConfig

# Under `launch --script-ps` the launcher names where a ps task writes the port it serves on.
PORT_FILE_ENV = settings.PS_PORT_FILE.name

_servers = {}  # target -> Server, for the sessions given a target


class Server:
    """A task of a TF1 cluster. `server_or_cluster_def`: a ClusterSpec or a dict of job name ->
    addresses. `config`, `protocol` and `start` are accepted and change nothing."""

    def __init__(self, server_or_cluster_def, job_name=None, task_index=None, protocol=None,
                 config=None, start=True):
        cluster = ClusterSpec(server_or_cluster_def)
        if job_name is None:
            if len(cluster.jobs) != 1:
                raise ValueError("tf.train.Server: give job_name, the cluster has jobs " +
                                 ", ".join(cluster.jobs))
            job_name = cluster.jobs[0]
        if job_name not in cluster.jobs:
            raise ValueError(f"tf.train.Server: job_name {job_name!r} is not a job of the "
                             f"cluster ({', '.join(cluster.jobs)})")
        tasks = cluster.num_tasks(job_name)
        if task_index is None:
            task_index = 0
        if not isinstance(task_index, int) or not 0 <= task_index < tasks:
            raise ValueError(f"tf.train.Server: task_index {task_index!r} is out of range for "
                             f"job {job_name!r} with {tasks} tasks")
        if job_name != "ps" and not cluster.num_tasks("ps"):
            raise ValueError("tf.train.Server: the cluster has no 'ps' job; psflow trains "
                             "with parameter servers")
        self.server_def = cluster
        self.job_name = job_name
        self.task_index = task_index
        self.address = cluster.task_address(job_name, task_index)
        self.target = f"grpc://{self.address}"
        if job_name != "ps":
            _servers[self.target] = self

    @property
    def task(self):
        """This worker's TaskConfig (for a "chief" or "worker" job)."""
        return TaskConfig(self.server_def, self.job_name, self.task_index)

    def start(self):
        """Accepted: the server starts when created (a ps task serves in join())."""

    def join(self):
        """A ps task serves its shard here and returns when the job is done (every worker has
        finished, or this process is told to stop). For other tasks it returns at once: a
        psflow worker serves nothing."""
        if self.job_name != "ps":
            return
        # Lazy: the parameter-server process brings gRPC, which local training never loads.
        from psflow.ps.__main__ import main as serve_shard
        host, port = _split_address(self.address)
        cluster = self.server_def
        args = ["--task-index", str(self.task_index),
                "--num-workers", str(cluster.num_tasks("chief") + cluster.num_tasks("worker")),
                "--host", host, "--port", str(port)]
        port_file = settings.PS_PORT_FILE.get()
        if port_file:
            args += ["--port-file", port_file]
        parent = parent_from_env()
        if parent is not None:  # under launch: exit with the launcher
            args += ["--parent-pid", str(parent)]
        code = serve_shard(args)
        if code:
            raise SystemExit(code)

    @staticmethod
    def create_local_server(config=None, start=True):
        raise NotImplementedError(
            "psflow does not implement tf.train.Server.create_local_server: a session without "
            "a target trains in this process")


def _split_address(address):
    """(host to bind, port) of a ps task's "host:port": the loopback address it names, or every
    interface when it names another host (a Kubernetes service, say)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"tf.train.Server: ps address {address!r} is not host:port")
    host = host.strip("[]")
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host, int(port)
    except ValueError:
        try:
            if ipaddress.ip_address(socket.gethostbyname(host)).is_loopback:
                return "127.0.0.1", int(port)
        except OSError:
            pass
    return "0.0.0.0", int(port)


def task_for_target(target):
    """The TaskConfig a session target names: that of this process's tf.train.Server whose
    target it is. ValueError for any other target."""
    server = _servers.get(target)
    if server is None:
        known = ", ".join(sorted(_servers)) or "none"
        raise ValueError(f"session target {target!r} is not the target of a tf.train.Server "
                         f"created in this process (those: {known}); create the session with "
                         "server.target, or with no target to train locally")
    return server.task
