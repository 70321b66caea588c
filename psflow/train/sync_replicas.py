"""Synchronous and bounded-staleness training, chosen in the script as in TensorFlow 1.x:

    opt = tf.train.SyncReplicasOptimizer(tf.train.AdamOptimizer(0.01),
                                         replicas_to_aggregate=2, total_num_replicas=3)
    train_op = opt.minimize(loss, global_step=step)

or without editing the script with `launch --mode sync|ssp|async`. In one process every mode
is plain training (a step aggregates the gradients of the one replica there is).
"""

from ..state_ops import no_op
from .consistency import Consistency
from .coordinator import QueueRunner
from .monitored_session import SessionRunHook
from .optimizers import Optimizer


class _ModeOptimizer:
    """Wraps an optimizer; its train ops carry a consistency mode."""

    def __init__(self, opt, consistency):
        if not isinstance(opt, Optimizer):
            raise TypeError(f"{type(self).__name__} wraps a psflow.train optimizer, got {opt!r}")
        self._opt = opt
        self.consistency = consistency

    def compute_gradients(self, loss, var_list=None):
        return self._opt.compute_gradients(loss, var_list)

    def apply_gradients(self, grads_and_vars, global_step=None, name=None, loss=None):
        return self._opt._train_op(grads_and_vars, global_step, name, loss,
                                   consistency=self.consistency)

    def minimize(self, loss, global_step=None, var_list=None, name=None):
        return self.apply_gradients(self.compute_gradients(loss, var_list),
                                    global_step=global_step, name=name, loss=loss)

    def make_session_run_hook(self, is_chief, num_tokens=-1):
        """TensorFlow's scripts add this hook to MonitoredTrainingSession; psflow's parameter
        servers do the aggregation themselves, so the hook does nothing."""
        return SessionRunHook()


class SyncReplicasOptimizer(_ModeOptimizer):
    """TF1's SyncReplicasOptimizer: each step averages the gradients of
    `replicas_to_aggregate` workers (default: all) computed at the same global step and
    applies them once; extra workers are backups whose late gradients are dropped. Workers
    that finish or die leave the step's membership instead of blocking it."""

    def __init__(self, opt, replicas_to_aggregate=None, total_num_replicas=None,
                 variable_averages=None, variables_to_average=None, use_locking=False,
                 name="sync_replicas"):
        if variable_averages is not None:
            raise NotImplementedError("SyncReplicasOptimizer: variable_averages is not supported")
        replicas = 0 if replicas_to_aggregate is None else replicas_to_aggregate
        if total_num_replicas is not None and replicas_to_aggregate is not None \
                and total_num_replicas < replicas_to_aggregate:
            raise ValueError(f"SyncReplicasOptimizer: total_num_replicas ({total_num_replicas}) "
                             f"is less than replicas_to_aggregate ({replicas_to_aggregate}); "
                             "each worker contributes one gradient per step")
        super().__init__(opt, Consistency("sync", replicas_to_aggregate=replicas))
        self.total_num_replicas = total_num_replicas
        self.name = name

    # TF1 scripts wire these into their Supervisor or session. psflow's parameter servers
    # aggregate the step themselves (no token queue, no local steps to set), so each is an op
    # that does nothing, or a queue runner that start_queue_runners has nothing to start for.
    @property
    def local_step_init_op(self):
        return no_op(name=f"{self.name}/local_step_init")

    @property
    def chief_init_op(self):
        return no_op(name=f"{self.name}/chief_init")

    @property
    def ready_for_local_init_op(self):
        return no_op(name=f"{self.name}/ready_for_local_init")

    @property
    def sync_token_queue(self):
        return no_op(name=f"{self.name}/sync_token_q")

    def get_init_tokens_op(self, num_tokens=-1):
        return no_op(name=f"{self.name}/init_tokens")

    def get_chief_queue_runner(self):
        return QueueRunner(self.sync_token_queue)


class BoundedStalenessOptimizer(_ModeOptimizer):
    """Stale-synchronous parallel training: gradients apply as they arrive, but no worker
    starts step t + staleness + 1 before the slowest live worker has finished step t.
    `staleness=0` is bulk-synchronous (the same as SyncReplicasOptimizer over all workers)."""

    def __init__(self, opt, staleness, name="bounded_staleness"):
        super().__init__(opt, Consistency("ssp", staleness=staleness))
        self.name = name
