"""Giving each worker its own disjoint shard of a dataset."""

import numpy as np

from psflow.train.cluster import task_config_from_env


def shard(*arrays, num_shards=None, index=None):
    """Every `num_shards`-th example starting at `index` (TensorFlow's `Dataset.shard`), of
    each array alike. Without arguments the shard is this worker's, from `TF_CONFIG` (all of
    the data when no cluster is configured). Returns one array, or a tuple for several."""
    if not arrays:
        raise ValueError("shard() needs at least one array")
    if num_shards is None and index is None:
        task = task_config_from_env()
        num_shards, index = (task.num_workers, task.worker_index) if task else (1, 0)
    elif num_shards is None or index is None:
        raise ValueError("give both num_shards and index, or neither")
    if num_shards < 1 or not 0 <= index < num_shards:
        raise ValueError(f"shard index {index} is out of range for {num_shards} shards")
    length = len(arrays[0])
    for a in arrays[1:]:
        if len(a) != length:
            raise ValueError(f"arrays to shard have different lengths: {length} and {len(a)}")
    picked = tuple(np.asarray(a)[index::num_shards] for a in arrays)
    return picked[0] if len(picked) == 1 else picked
