"""`tf.contrib`: only what everyday TF1 scripts take from it. Anything else is refused by
name."""

import types

from .train.optimizers import get_global_step, get_or_create_global_step
from .unimplemented import refuse

framework = types.SimpleNamespace(get_or_create_global_step=get_or_create_global_step,
                                  get_global_step=get_global_step)


def __getattr__(name):
    raise refuse("tf.contrib", name)
