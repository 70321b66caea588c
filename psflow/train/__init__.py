"""`psflow.train`: optimizers, the global step, the cluster description and
MonitoredTrainingSession, with TensorFlow 1.x's names."""

from ..unimplemented import refuse as _refuse
from .cluster import ClusterSpec, TaskConfig, replica_device_setter, task_config_from_env
from .consistency import Consistency
from .coordinator import Coordinator, QueueRunner, start_queue_runners
from .learning_rate import exponential_decay, inverse_time_decay, piecewise_constant
from .monitored_session import (
    CheckpointSaverHook,
    MonitoredTrainingSession,
    Scaffold,
    SessionRunArgs,
    SessionRunContext,
    SessionRunHook,
    SessionRunValues,
    StopAtStepHook,
    SummarySaverHook,
)
from .optimizers import (
    AdadeltaOptimizer,
    AdagradOptimizer,
    AdamOptimizer,
    FtrlOptimizer,
    GradientDescentOptimizer,
    LazyAdamOptimizer,
    MomentumOptimizer,
    Optimizer,
    RMSPropOptimizer,
    create_global_step,
    get_global_step,
    get_or_create_global_step,
    global_step,
)
from .saver import Saver, checkpoint_exists, latest_checkpoint
from .server import Server
from .supervisor import Supervisor
from .sync_replicas import BoundedStalenessOptimizer, SyncReplicasOptimizer
from .update_rules import UpdateRule

__all__ = [
    "AdadeltaOptimizer", "AdagradOptimizer", "AdamOptimizer", "BoundedStalenessOptimizer",
    "checkpoint_exists", "CheckpointSaverHook", "ClusterSpec", "Consistency", "Coordinator",
    "create_global_step", "exponential_decay", "FtrlOptimizer", "get_global_step",
    "get_or_create_global_step", "global_step", "GradientDescentOptimizer", "inverse_time_decay",
    "latest_checkpoint", "LazyAdamOptimizer", "MomentumOptimizer", "MonitoredTrainingSession",
    "Optimizer", "piecewise_constant", "QueueRunner", "replica_device_setter", "RMSPropOptimizer",
    "Saver", "Scaffold", "Server", "SessionRunArgs", "SessionRunContext", "SessionRunHook",
    "SessionRunValues", "start_queue_runners", "StopAtStepHook", "SummarySaverHook", "Supervisor",
    "SyncReplicasOptimizer", "task_config_from_env", "TaskConfig", "UpdateRule",
]


def __getattr__(name):
    raise _refuse("tf.train", name)
