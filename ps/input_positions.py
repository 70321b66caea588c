"""Shard 0's record of how far the job's pushes have consumed its followed datasets: per
(dataset, shard of its files) the last file and line count whose gradients were applied,
carried by the pushes, written into checkpoints and handed to workers when they start (see
psflow.data.followed_files)."""

import threading

from psflow.errors import InvalidArgumentError

# (dataset, shard, num_shards, file, lines): one position, as the wire and checkpoints carry it
MAX_DATASET_CHARS = 4096


def checked(position):
    """`position` (dataset, shard, num_shards, file, lines) with its types checked;
    InvalidArgumentError naming what is wrong."""
    dataset, shard, num_shards, file, lines = position
    if not dataset or len(dataset) > MAX_DATASET_CHARS:
        raise InvalidArgumentError(f"input position: the dataset name must have 1 to "
                                   f"{MAX_DATASET_CHARS} characters, got {len(dataset)}")
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise InvalidArgumentError(f"input position of {dataset!r}: shard {shard} is out of "
                                   f"range for {num_shards} shards")
    if not file or "/" in file or "\0" in file:
        raise InvalidArgumentError(f"input position of {dataset!r}: {file!r} is not a file "
                                   "name")
    if lines < 0:
        raise InvalidArgumentError(f"input position of {dataset!r}: {lines} lines")
    return str(dataset), int(shard), int(num_shards), str(file), int(lines)


class InputPositions:
    """{(dataset, shard): (num_shards, file, lines)}. Every method is safe to call from many
    threads."""

    def __init__(self):
        self._positions = {}
        self._lock = threading.Lock()

    def record(self, positions):
        """Positions a push carried; each replaces the one of its (dataset, shard)."""
        checked_positions = [checked(p) for p in positions]  # all checked before any is kept
        with self._lock:
            for dataset, shard, num_shards, file, lines in checked_positions:
                self._positions[(dataset, shard)] = (num_shards, file, lines)

    def replace(self, positions):
        """Every position at once: a checkpoint's, restored."""
        fresh = {}
        for dataset, shard, num_shards, file, lines in (checked(p) for p in positions):
            fresh[(dataset, shard)] = (num_shards, file, lines)
        with self._lock:
            self._positions = fresh

    def all(self):
        """[(dataset, shard, num_shards, file, lines)], sorted."""
        with self._lock:
            return [(dataset, shard, *rest) for (dataset, shard), rest in
                    sorted(self._positions.items())]
