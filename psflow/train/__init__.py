"""`psflow.train`: optimizers, the global step, the cluster description and
MonitoredTrainingSession, with TensorFlow 1.x's names."""

from .cluster import ClusterSpec, TaskConfig, replica_device_setter, task_config_from_env
from ..config import Coordinator, QueueRunner, start_queue_runners
from .consistency import Consistency
from .learning_rate import exponential_decay, inverse_time_decay, piecewise_constant
from .monitored_session import (CheckpointSaverHook, MonitoredTrainingSession, Scaffold,
                                SessionRunArgs, SessionRunContext, SessionRunHook,
                                SessionRunValues, StopAtStepHook, SummarySaverHook)
from .saver import Saver, checkpoint_exists, latest_checkpoint
from .server import Server
from .supervisor import Supervisor
from .optimizers import (AdadeltaOptimizer, AdagradOptimizer, AdamOptimizer, FtrlOptimizer,
                         RMSPropOptimizer,
                         GradientDescentOptimizer, LazyAdamOptimizer, MomentumOptimizer, Optimizer,
                         create_global_step, get_global_step, get_or_create_global_step,
                         global_step)
from .sync_replicas import BoundedStalenessOptimizer, SyncReplicasOptimizer
from .update_rules import UpdateRule

__all__ = [
    "AdadeltaOptimizer", "AdagradOptimizer", "AdamOptimizer", "RMSPropOptimizer", "BoundedStalenessOptimizer", "CheckpointSaverHook",
    "ClusterSpec", "Coordinator", "Saver", "checkpoint_exists", "latest_checkpoint", "QueueRunner", "Server", "SummarySaverHook", "Supervisor",
    "exponential_decay", "inverse_time_decay", "piecewise_constant", "start_queue_runners",
    "Consistency", "FtrlOptimizer", "SyncReplicasOptimizer", "GradientDescentOptimizer",
    "LazyAdamOptimizer",
    "MomentumOptimizer", "MonitoredTrainingSession", "Optimizer", "Scaffold", "SessionRunArgs",
    "SessionRunContext", "SessionRunHook", "SessionRunValues", "StopAtStepHook", "TaskConfig",
    "UpdateRule", "create_global_step", "replica_device_setter", "get_global_step", "get_or_create_global_step",
    "global_step", "task_config_from_env",
]


def __getattr__(name):
    from ..unimplemented import refuse
    raise refuse("tf.train", name)
