"""Synchronous and bounded-staleness training, chosen in the script as in TensorFlow 1.x:

    opt = tf.train.SyncReplicasOptimizer(tf.train.AdamOptimizer(0.01),
                                         replicas_to_aggregate=2, total_num_replicas=3)
    train_op = opt.minimize(loss, global_step=step)

or without editing the script with `launch --mode sync|ssp|async`. In one process every mode
is plain training (a step aggregates the gradients of the one replica there is).
"""

import collections
import numbers
import os

from .monitored_session import SessionRunHook

MODES = ("async", "sync", "ssp")


class Consistency(collections.namedtuple("Consistency",
                                         "mode replicas_to_aggregate staleness")):
    """How pushes are applied: "async"; "sync" averaging `replicas_to_aggregate` workers'
    gradients per step (0: every live worker); "ssp" with at most `staleness` steps between
    the fastest and the slowest live worker."""

    __slots__ = ()

    def __new__(cls, mode="async", replicas_to_aggregate=0, staleness=0):
        if mode not in MODES:
            raise ValueError(f"unknown training mode {mode!r}; one of {', '.join(MODES)}")
        for name, value in (("replicas_to_aggregate", replicas_to_aggregate),
                            ("staleness", staleness)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        return super().__new__(cls, mode, int(replicas_to_aggregate), int(staleness))


def consistency_from_env(environ=None):
    """The mode `launch --mode` chose (PSFLOW_MODE, PSFLOW_REPLICAS_TO_AGGREGATE,
    PSFLOW_STALENESS); async when unset."""
    environ = os.environ if environ is None else environ

    def integer(name):
        raw = environ.get(name, "0") or "0"
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{name}={raw!r} is not an integer") from None

    return Consistency(environ.get("PSFLOW_MODE", "async") or "async",
                       integer("PSFLOW_REPLICAS_TO_AGGREGATE"), integer("PSFLOW_STALENESS"))


class _ModeOptimizer:
    """Wraps an optimizer; its train ops carry a consistency mode."""

    def __init__(self, opt, consistency):
        if not hasattr(opt, "apply_gradients") or not hasattr(opt, "compute_gradients"):
            raise TypeError(f"{type(self).__name__} wraps an optimizer, got {opt!r}")
        self._opt = opt
        self.consistency = consistency

    def compute_gradients(self, loss, var_list=None):
        return self._opt.compute_gradients(loss, var_list)

    def apply_gradients(self, grads_and_vars, global_step=None, name=None, loss=None):
        op = self._opt.apply_gradients(grads_and_vars, global_step=global_step, name=name,
                                       loss=loss)
        op.consistency = self.consistency
        return op

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


class BoundedStalenessOptimizer(_ModeOptimizer):
    """Stale-synchronous parallel training: gradients apply as they arrive, but no worker
    starts step t + staleness + 1 before the slowest live worker has finished step t.
    `staleness=0` is bulk-synchronous (the same as SyncReplicasOptimizer over all workers)."""

    def __init__(self, opt, staleness, name="bounded_staleness"):
        super().__init__(opt, Consistency("ssp", staleness=staleness))
        self.name = name
