"""JobSpec: what a local job runs (its script, workers, parameter servers, mode and bounds),
checked before anything starts, and the commands and TF_CONFIG its children get."""

import dataclasses
import json
import os
import sys

from psflow import settings
from psflow.fileio import default_checkpoint_roots
from psflow.train.consistency import Consistency


def _default_ps_command():
    # -P keeps the current directory off sys.path: run from a source checkout, its psflow/
    # folder would otherwise shadow the installed package and hide psflow.ps.
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []
    return [sys.executable, *safe_path, "-m", "psflow.ps"]


@dataclasses.dataclass
class JobSpec:
    """What `run_job` runs: `workers` processes of `script` and `ps` parameter servers.

    `ps_port` 0 lets every parameter server take a free port; otherwise PS i asks for
    `ps_port + i` and takes a free one if that is taken. `grace_period` is the time between
    SIGTERM and SIGKILL. `ps_command` is how a parameter server is started (the PS flags are
    appended to it).
    """

    script: str
    script_args: list = dataclasses.field(default_factory=list)
    workers: int = 1
    ps: int = 1
    # Each parameter-server shard runs as a chain of this many replicas under a chain master
    # (docs/replication.md; locally launcher.replicated_shards); 1: one server per shard.
    ps_replicas: int = 1
    mode: str = "async"
    staleness: int = 0
    replicas_to_aggregate: int = 0
    ps_port: int = 0
    max_restarts: int = 3
    host: str = "127.0.0.1"
    grace_period: float = 5.0
    progress: bool = True
    ps_start_timeout: float = 30.0
    ps_exit_timeout: float = 30.0
    timeout: float = 0.0
    idle_timeout: float = 600.0
    checkpoint_root: str = dataclasses.field(default_factory=lambda: default_checkpoint_roots())
    ps_command: list = dataclasses.field(default_factory=_default_ps_command)
    # TF1's classic flags: each worker gets --ps_hosts, --worker_hosts, --job_name=worker and
    # --task_index; with script_ps the ps tasks are the script too (--job_name=ps), serving
    # in its tf.train.Server(...).join().
    tf_flags: bool = False
    script_ps: bool = False
    # Serve Prometheus metrics from every process, on free ports picked at the start.
    metrics: bool = False
    # The chief's MonitoredTrainingSession exports numbered servables under export_dir
    # (PSFLOW_EXPORT_DIR), every export_every_n_checkpoints checkpoints if set, and at the end.
    export_dir: str = ""
    export_every_n_checkpoints: int = 0
    # One checkpoint in this many holds every table row, the others deltas
    # (PSFLOW_CHECKPOINT_FULL_EVERY); None: the workers' default.
    checkpoint_full_every: int | None = None
    # Online training (an unbounded input stream): the parameter servers never exit on their
    # own, failed workers are restarted without bound (with a backoff), and a stop gives the
    # workers `stop_timeout` seconds to end their step and the chief to write a final
    # checkpoint (see launcher.online).
    online: bool = False
    stop_timeout: float = 120.0
    # A serving parameter tier: this many psflow-params per parameter server, each following
    # its shard (see launcher.serving_tier); 0: none.
    serving_replicas: int = 0

    def export_env(self):
        """The settings that hand the workers the export base path (and online mode, and
        how often a checkpoint is full)."""
        env = {settings.ONLINE.name: "1"} if self.online else {}
        if self.checkpoint_full_every is not None:
            env[settings.CHECKPOINT_FULL_EVERY.name] = str(self.checkpoint_full_every)
        if self.export_dir:
            env[settings.EXPORT_DIR.name] = self.export_dir
            if self.export_every_n_checkpoints:
                env[settings.EXPORT_EVERY_N_CHECKPOINTS.name] = \
                    str(self.export_every_n_checkpoints)
        return env

    @property
    def worker_hosts(self):
        """The workers' addresses as the cluster names them: they serve nothing (port 0)."""
        return [f"{self.host}:0"] * self.workers

    def ps_port_of(self, index, replica=0):
        """The port PS `index` (its replica `replica`, in a chain) asks for (0: any free
        one)."""
        return self.ps_port + index * self.ps_replicas + replica if self.ps_port else 0

    def classic_flags(self, ps_addresses, job_name, index):
        return [f"--ps_hosts={','.join(ps_addresses)}",
                f"--worker_hosts={','.join(self.worker_hosts)}",
                f"--job_name={job_name}", f"--task_index={index}"]

    def script_command(self, *flags):
        """The command that runs the script (unbuffered) with its arguments and `flags`."""
        return [sys.executable, "-u", str(self.script), *self.script_args, *flags]

    def tf_config(self, ps_addresses, task_type, index, ps_replicas=None, chain_master=None):
        """TF_CONFIG of task (`task_type`, `index`) with the parameter servers at
        `ps_addresses`, as JSON. For shards run as chains, `ps_replicas` ([shard][replica]
        addresses, head first) and `chain_master` go in a key of their own, "psflow", so that
        the cluster stays a plain TF_CONFIG (its `ps` list names the heads at the start)."""
        config = {"cluster": {"ps": list(ps_addresses), "worker": self.worker_hosts},
                  "task": {"type": task_type, "index": index}}
        if ps_replicas is not None or chain_master is not None:
            config["psflow"] = {"ps_replicas": [list(r) for r in ps_replicas or ()],
                                "chain_master": chain_master}
        return json.dumps(config)

    @property
    def consistency(self):
        """The job's training mode (psflow.train.consistency.Consistency)."""
        return Consistency(self.mode, self.replicas_to_aggregate, self.staleness)

    def validate(self):
        """Raises ValueError naming the first thing that is wrong."""
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"the job needs at least 1 worker, got {self.workers!r}")
        if not isinstance(self.ps, int) or self.ps < 1:
            raise ValueError(f"the job needs at least 1 parameter server, got {self.ps!r}")
        _ = self.consistency  # raises ValueError naming what is wrong with the mode
        if self.replicas_to_aggregate > self.workers:
            raise ValueError(f"replicas_to_aggregate ({self.replicas_to_aggregate}) is more "
                             f"than the {self.workers} workers")
        if not isinstance(self.max_restarts, int) or self.max_restarts < 0:
            raise ValueError(f"max_restarts must be a whole number >= 0, got "
                             f"{self.max_restarts!r}")
        if not isinstance(self.ps_port, int) or not 0 <= self.ps_port <= 65535:
            raise ValueError(f"the PS port must be from 0 to 65535, got {self.ps_port!r}")
        if not isinstance(self.ps_replicas, int) or self.ps_replicas < 1:
            raise ValueError(f"ps_replicas must be a whole number >= 1, got "
                             f"{self.ps_replicas!r}")
        last = self.ps_port + self.ps * self.ps_replicas - 1
        if self.ps_port and last > 65535:
            raise ValueError(f"PS ports {self.ps_port}..{last} go past 65535")
        for what in ("grace_period", "ps_start_timeout", "ps_exit_timeout", "stop_timeout"):
            value = getattr(self, what)
            if not (isinstance(value, (int, float)) and 0 < value < float("inf")):
                raise ValueError(f"{what} must be a positive number of seconds, got {value!r}")
        for what in ("timeout", "idle_timeout"):  # 0: no bound
            value = getattr(self, what)
            if not (isinstance(value, (int, float)) and 0 <= value < float("inf")):
                raise ValueError(f"{what} must be 0 or more seconds, got {value!r}")
        if not isinstance(self.serving_replicas, int) or self.serving_replicas < 0:
            raise ValueError(f"serving_replicas must be a whole number >= 0, got "
                             f"{self.serving_replicas!r}")
        if self.serving_replicas and self.script_ps:
            raise ValueError("a serving tier follows psflow's own parameter servers; it does "
                             "not go with --script-ps")
        if self.ps_replicas > 1:
            self._validate_chains()
        if self.export_every_n_checkpoints and not self.export_dir:
            raise ValueError("--export-every-n-checkpoints goes with --export-dir")
        script = str(self.script)
        if not (os.path.isfile(script) or os.path.isfile(os.path.join(script, "__main__.py"))):
            raise ValueError(f"script not found: {script}" if not os.path.exists(script) else
                             f"not a runnable script: {script}")

    def _validate_chains(self):
        """What does not go with shards run as chains of replicas (ps_replicas > 1)."""
        if self.script_ps:
            raise ValueError("--ps-replicas runs psflow's own parameter servers as chains of "
                             "replicas; it does not go with --script-ps")
