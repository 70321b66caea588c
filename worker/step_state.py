"""What one thread's current run of a DistributedStore pulled and pushed."""

import threading

from psflow.key_index import RunDedups


class StepState(threading.local):
    """What one thread's current run pulled: values, versions, the global step, and the parts
    read from each shard. `returned` holds the values the last push's replies carried
    back ({part name: (array, version)}) with `returned_step`, for the next training run.
    `run` and `pushes` name the run's pushes (see DistributedStore.begin_run)."""

    def __init__(self):
        self.values = {}
        self.versions = {}
        self.global_step = 0
        self.read = {}
        self.returned = {}
        self.returned_step = None
        self.run = 0  # this run's number (0: unnumbered), and its pushes so far
        self.pushes = 0
        self.commit = None  # sync: the last step decided, for the other shards
        self.dedups = RunDedups()  # this run's lookups' ids
        self.rows = {}  # (variable, ids key) -> distinct rows pulled ahead of the run
        self.pushing = 0.0  # seconds this run spent pushing, and pulling rows during it
        self.pulling = 0.0
