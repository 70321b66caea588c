"""How a job's pushes are applied: the modes, their parameters and their rules, in one place.

- "async": every push is applied on arrival.
- "sync": each step averages `replicas_to_aggregate` workers' gradients (0: every live worker)
  computed at the same global step and applies them once.
- "ssp": pushes apply on arrival, but no worker runs more than `staleness` steps ahead of the
  slowest live worker. Staleness 0 is bulk-synchronous: it runs as "sync" over every worker.

`launch --mode` hands a mode to the workers through the environment (`to_env`/`from_env`);
a train op built by SyncReplicasOptimizer or BoundedStalenessOptimizer carries its own.
"""

import collections
import numbers

from .. import settings

MODES = ("async", "sync", "ssp")
# The modes in which workers step together, so a dead worker must leave the membership
# rather than stop the job.
MEMBERSHIP_MODES = ("sync", "ssp")

ENV_MODE = settings.MODE.name
ENV_REPLICAS = settings.REPLICAS_TO_AGGREGATE.name
ENV_STALENESS = settings.STALENESS.name


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
        for name, value, applies_to in (("replicas_to_aggregate", replicas_to_aggregate, "sync"),
                                        ("staleness", staleness, "ssp")):
            if value and mode != applies_to:
                raise ValueError(f"{name} applies to mode {applies_to}, not {mode}")
        return super().__new__(cls, mode, int(replicas_to_aggregate), int(staleness))

    def effective(self):
        """The mode as it runs: ssp with staleness 0 is sync over every live worker."""
        if self.mode == "ssp" and self.staleness == 0:
            return Consistency("sync")
        return self

    @property
    def synchronous(self):
        """Steps are decided in lockstep on every shard (sync, or ssp with staleness 0)."""
        return self.effective().mode == "sync"

    @property
    def needs_membership(self):
        """Workers wait for each other, so one that dies must leave rather than stop the job."""
        return self.mode in MEMBERSHIP_MODES

    def to_env(self):
        """The environment variables that hand this mode to a worker (see from_env)."""
        env = {ENV_MODE: self.mode}
        if self.mode == "ssp":
            env[ENV_STALENESS] = str(self.staleness)
        if self.mode == "sync":
            env[ENV_REPLICAS] = str(self.replicas_to_aggregate)
        return env


def from_env(environ=None):
    """The mode `launch --mode` chose (see Consistency.to_env); async when unset."""
    mode = settings.MODE.get(environ)
    # Each mode reads its own parameter only; the other's may be left over in the environment.
    return Consistency(mode, settings.REPLICAS_TO_AGGREGATE.get(environ) if mode == "sync" else 0,
                       settings.STALENESS.get(environ) if mode == "ssp" else 0)


