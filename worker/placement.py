"""Which parameter-server shard owns which variable (and which table key): one deterministic
function that every worker computes alike, so shards never need to agree on anything among
themselves.

Variables are spread greedily by byte size (largest first, each to the least-loaded shard).
A variable larger than `partition_bytes` is split row-wise into parts, each placed on its own;
the script still sees one Variable. Each part travels under its own wire name.
"""

import math

import numpy as np

from psflow.key_index import shard_of_keys

# Variables above this many bytes are split row-wise; it also bounds the size of one part,
# and so of any message carrying it (within gRPC's 512 MB). Each part costs a little in every
# step that touches it (a selection, a gradient, an apply), so parts are large: a 40M-row
# embedding table is 11 parts, not 40.
PARTITION_BYTES = 256 * 1024 * 1024


class Part:
    """A row range of a variable (or all of it) as one parameter-server variable."""

    __slots__ = ("variable", "name", "shard", "start", "stop", "shape", "dtype", "nbytes")

    def __init__(self, variable, name, start, stop, shape):
        self.variable = variable
        self.name = name
        self.start, self.stop = start, stop
        self.shape = shape
        self.dtype = np.dtype(variable.dtype)
        self.nbytes = math.prod(shape) * self.dtype.itemsize
        self.shard = None

    def __repr__(self):
        return f"Part({self.name!r}, rows {self.start}:{self.stop}, shard {self.shard})"


class Placement:
    """The parts of every variable and the shard of each part."""

    def __init__(self, variables, num_shards, partition_bytes=PARTITION_BYTES):
        if num_shards < 1:
            raise ValueError("a placement needs at least one parameter-server shard")
        self.num_shards = num_shards
        self.parts = {}
        # Each variable's parts' first rows and the last one's end: sorted row ids split
        # by part with one searchsorted.
        self.bounds = {}
        items = []
        for order, var in enumerate(variables):
            parts = _split(var, num_shards, partition_bytes)
            self.parts[var] = parts
            self.bounds[var] = np.array([p.start for p in parts] + [parts[-1].stop])
            items += [(-p.nbytes, order, k, p) for k, p in enumerate(parts)]
        loads = [0] * num_shards
        for _, _, _, part in sorted(items, key=lambda item: item[:3]):
            shard = min(range(num_shards), key=lambda s: (loads[s], s))
            part.shard = shard
            loads[shard] += part.nbytes
        self.loads = loads

    def parts_of(self, var):
        return self.parts[var]

    def shard_parts(self, shard):
        return [p for parts in self.parts.values() for p in parts if p.shard == shard]


def keys_by_shard(keys, num_shards):
    """[(shard, positions in `keys` of the keys it owns)] for each shard that owns any of the
    table keys `keys` (by their hash: psflow.embedding_table.shard_of_keys)."""
    shards = shard_of_keys(keys, num_shards)
    return [(shard, np.flatnonzero(shards == shard)) for shard in np.unique(shards).tolist()]


def _split(var, num_shards, partition_bytes):
    shape = var.shape
    if shape is None or None in shape:
        raise ValueError(f"variable {var.name!r} has a shape that is not fully known "
                         f"({shape}); parameter servers need fixed shapes")
    nbytes = math.prod(shape) * np.dtype(var.dtype).itemsize
    wanted = min(getattr(var, "partitions", None) or 1, shape[0] if shape else 1)
    if (nbytes <= partition_bytes and wanted < 2) or len(shape) == 0 or shape[0] < 2:
        if nbytes > partition_bytes:
            raise ValueError(f"variable {var.name!r} ({nbytes} bytes, shape {shape}) is larger "
                             f"than {partition_bytes} bytes and has no rows to split it by")
        return [Part(var, var.name, 0, shape[0] if shape else 0, tuple(shape))]
    rows = shape[0]
    row_bytes = nbytes // rows
    if row_bytes > partition_bytes:
        raise ValueError(f"variable {var.name!r}: one row is {row_bytes} bytes, more than the "
                         f"{partition_bytes}-byte part limit")
    rows_per_part = partition_bytes // row_bytes
    # Enough parts that none exceeds the limit, at least one per shard to spread the load, and
    # at least as many as a partitioner asked for.
    count = max(math.ceil(rows / rows_per_part), min(num_shards, rows), wanted)
    bounds = np.linspace(0, rows, count + 1).round().astype(int)
    return [Part(var, f"{var.name}/part_{k}", int(a), int(b), (int(b - a),) + tuple(shape[1:]))
            for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))]
