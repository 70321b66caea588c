"""`psflow.train`: optimizers and the global step, with TensorFlow 1.x's names."""

from .optimizers import (AdagradOptimizer, AdamOptimizer, GradientDescentOptimizer,
                         MomentumOptimizer, Optimizer, create_global_step, get_global_step,
                         get_or_create_global_step, global_step)
from .update_rules import UpdateRule

__all__ = [
    "AdagradOptimizer", "AdamOptimizer", "GradientDescentOptimizer", "MomentumOptimizer",
    "Optimizer", "UpdateRule", "create_global_step", "get_global_step",
    "get_or_create_global_step", "global_step",
]
