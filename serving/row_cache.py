"""A predict server's cache of hot table rows read from the serving parameter tier: rows by
key, each kept for `ttl` seconds after it was read (so a cached row is at most that much older
than the tier's), at most `capacity` rows per table (when full, the cache starts afresh).
Keys are found with psflow's vectorized KeyIndex, never a Python dict lookup per key."""

import threading
import time

import numpy as np

from psflow.key_index import Growable, KeyIndex


class _TableCache:
    def __init__(self, dim, dtype):
        self.index = KeyIndex()
        self.rows = Growable((dim,), dtype)
        self.read_at = Growable((), np.float64)


class RowCache:
    """Rows by (table, key) for `ttl` seconds; thread-safe."""

    def __init__(self, capacity=100_000, ttl=0.25, clock=time.monotonic):
        self.capacity, self.ttl, self.clock = int(capacity), float(ttl), clock
        self._tables = {}
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, name, keys):
        """(rows, fresh): rows (len(keys), dim) where `fresh` (a bool per key) holds, else
        garbage; None when the table has nothing cached."""
        if self.capacity <= 0 or self.ttl <= 0:
            return None
        with self._lock:
            cached = self._tables.get(name)
            if cached is None or not cached.index.size:
                self.misses += keys.size
                return None
            entries = cached.index.find(keys)
            known = entries >= 0
            fresh = known.copy()
            fresh[known] = cached.read_at.array[entries[known]] >= self.clock() - self.ttl
            rows = cached.rows.array[np.where(fresh, entries, 0)]
        hits = int(fresh.sum())
        self.hits += hits
        self.misses += keys.size - hits
        return rows, fresh

    def put(self, name, keys, rows):
        """Keeps `rows` of distinct `keys`, read now."""
        if self.capacity <= 0 or self.ttl <= 0 or not keys.size:
            return
        now = self.clock()
        with self._lock:
            cached = self._tables.get(name)
            if cached is None or cached.rows.row_shape != rows.shape[1:] or \
                    cached.index.size + keys.size > self.capacity:
                cached = self._tables[name] = _TableCache(rows.shape[1], rows.dtype)
            entries, new = cached.index.insert(keys)
            grown = int(new.sum())
            if grown:
                cached.rows.append(np.zeros((grown,) + rows.shape[1:], rows.dtype))
                cached.read_at.append(np.zeros(grown))
            cached.rows.array[entries] = rows
            cached.read_at.array[entries] = now
