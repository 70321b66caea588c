"""The worker's variable store: the Variables live on the parameter-server shards.

DistributedStore is the store a DistributedSession runs with (the psflow.variable_store
contract LocalVariableStore also keeps). Its parts, each in a module of its own:
- initialization: registering with the shards, declaring the variables, the chief's initial
  values and the others' wait for them;
- pulls: what a run reads (`prefetch`, `read_rows`);
- pushes: a run's gradients (`apply_gradients`), split by gradient_split;
- save_restore: checkpoints through the shards;
- step_state: what one thread's current run pulled and pushed.
"""

import itertools
import logging
import secrets

import numpy as np

from psflow import settings
from psflow.errors import InvalidArgumentError, PsflowError
from psflow.proto import psflow_pb2 as pb
from psflow.train.consistency import Consistency
from psflow.train.optimizers import get_global_step
from psflow.transport import memory
from .client import Fanout, shard_clients, worker_request
from .initialization import Initialization
from .placement import PARTITION_BYTES, Placement
from .pulls import Pulls
from .pushes import Pushes
from .save_restore import SaveRestore
from .step_state import StepState

log = logging.getLogger(__name__)

# How long a worker's farewell (WorkerDone) waits for each shard.
FAREWELL_TIMEOUT_S = settings.FAREWELL_TIMEOUT.get()


class DistributedStore(Initialization, Pulls, Pushes, SaveRestore):
    """The variable store of a DistributedSession: psflow.variable_store.VariableStore (read,
    assign, read_rows, dedup, init_table, apply_gradients, save, restore) backed by
    parameter-server shards. `consistency` is the job's mode, for train ops that do not name
    their own."""

    def __init__(self, graph, task, partition_bytes=PARTITION_BYTES, consistency=None):
        memory.tune_allocator()
        self.task = task
        self.worker = task.worker_index
        self.clients = shard_clients(task.ps_addresses,
                                     chain_master=getattr(task, "chain_master", None))
        self.fanout = Fanout(len(self.clients))
        self.global_step_var = get_global_step(graph)
        self.tables = [v for v in graph.variables if v.is_table]
        self.variables = [v for v in graph.variables if v is not self.global_step_var
                          and not v.is_table]
        self.placement = Placement(self.variables, len(self.clients), partition_bytes)
        self.step = StepState()
        self.last_global_step = 0
        self._rule_protos = {}
        self.consistency = consistency or Consistency()
        # Names this process's pushes apart from those of an earlier run of the same worker.
        self.incarnation = secrets.randbits(64) or 1
        self._runs = itertools.count(1)
        self.dropped = 0  # steps whose gradients came too late (sync)
        self.positions_sent = None  # the input positions' version shard 0 has (pushes)
        self.checkpoint_roots = {}  # shard -> the folder it writes checkpoints in ("": none)
        # What this worker is doing, in words, for the heartbeats (a stuck job names it).
        self.activity = "starting its session"

    # -- a run -------------------------------------------------------------------------------
    def begin_run(self):
        """Numbers this thread's next run. Its pushes carry the number, and a run tried again
        (see DistributedSession.with_recovery) keeps it, so a shard that took a push already
        does not apply it twice."""
        step = self.step
        step.run = next(self._runs)
        step.pushing = step.pulling = 0.0

    def dedup(self, ids):
        """The Dedup of `ids`, computed once per run whoever asks (lookups and gradients)."""
        return self.step.dedups(ids)

    def read(self, var):
        if var is self.global_step_var:  # counted on shard 0, read in the variable's dtype
            return np.asarray(self.step.global_step, dtype=var.dtype)[()]
        value = self.step.values.get(var)
        if value is None:
            self.prefetch([var], fresh=False)
            value = self.step.values[var]
        return value

    def initialize_value(self, var, value):
        """What an initializer op does on a cluster: nothing. The chief gave every variable its
        initial value (or a checkpoint's) when its session started, and the global step lives
        on shard 0; a worker that runs global_variables_initializer(), as TF1 scripts do, must
        not reset a model that others are training."""

    def assign(self, var, value):
        if var is self.global_step_var:
            raise InvalidArgumentError("the global step lives on parameter server 0 and "
                                       "advances with each training step; it cannot be assigned")
        value = np.asarray(value, dtype=var.dtype)
        if value.shape != tuple(var.shape):
            raise InvalidArgumentError(f"cannot assign a value of shape {value.shape} to "
                                       f"variable {var.name!r} of shape {var.shape}")
        self.initialize({var: value}, overwrite=True)
        self.step.values.pop(var, None)

    def traffic(self):
        """(bytes sent, bytes received) in the Pull, PullRows and Push messages so far."""
        return (sum(c.sent for c in self.clients), sum(c.received for c in self.clients))

    # -- membership ----------------------------------------------------------------------------
    def heartbeat(self, local_step, loss, examples=0):
        request = pb.HeartbeatRequest(task_index=self.worker, local_step=local_step, loss=loss,
                                      activity=self.activity, examples=examples)
        for client in self.clients:
            client.call("Heartbeat", request, timeout=5.0)

    def done(self):
        """Tells every shard this worker is done. A shard that does not answer (frozen, or
        gone already) is named in a warning and skipped: finishing is not failing, and the
        launcher ends what is left. Returns the shards that did not answer."""
        silent = []
        for client in self.clients:
            try:
                client.call("WorkerDone", worker_request(self.worker), timeout=FAREWELL_TIMEOUT_S)
            except PsflowError as exc:
                log.warning("parameter server %d did not take this worker's farewell (%s); "
                            "finishing anyway", client.index, exc)
                silent.append(client.index)
        return silent

    def close(self):
        self.fanout.close()
        for client in self.clients:
            client.close()
