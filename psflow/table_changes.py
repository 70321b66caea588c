""""Rows changed since X": what an embedding table changed after a sequence number, the one
mechanism behind everything that follows a table's changes rather than rereading it whole (the
live parameter stream to serving, replica catch-up, incremental checkpoints).

A shard counts its changes with one `ChangeClock`: every change to one of its tables (rows
created, updated, loaded or removed by one call) takes the next sequence number. A table keeps
per row the sequence of its last change (`RowSequences`, beside its values, with the largest
sequence of each block of BLOCK_ROWS rows so that a scan skips blocks nobody changed) and a
bounded log of the keys whose rows went (`Tombstones`). `EmbeddingTable.changes_since(seq)`
reads them: the rows changed after `seq` with their current values, the keys removed after it
(without the ones that have a row again) and the sequence it is complete up to.

Changes read this way are states, not events: applying them (removed keys first, then rows)
after any state at or past `seq` gives the table's state at the sequence they are complete up
to, and applying them twice changes nothing.
"""

import bisect
import collections
import itertools
import threading

import numpy as np

from .errors import FailedPreconditionError
from .key_index import Growable

BLOCK_SHIFT = 12
BLOCK_ROWS = 1 << BLOCK_SHIFT  # rows per block of RowSequences.block_max
TOMBSTONE_LIMIT = 1 << 20  # keys a table's tombstone log keeps

# A table's changes after `since`: rows (int64 keys [n], values [n, dim]) changed after it with
# their values now, keys [m] whose rows were removed after it and have none now, and `upto`:
# every change up to that sequence is in them (later ones may be too). `state`, when asked
# for, is everything else a copy of the table needs of those rows, in EmbeddingTable.state()'s
# fields (keys, values, last_step, slots): what `load` takes.
Changes = collections.namedtuple("Changes", "keys values removed upto state")


class ChangesLost(FailedPreconditionError):
    """The changes asked for go back further than a table's tombstone log: only a full copy
    (changes since 0) can bring a reader up to date."""


class ChangeClock:
    """A shard's sequence numbers: `advance()` takes the next (1, 2, ...), safe from any
    thread; `value` is the last taken (0 before any)."""

    def __init__(self):
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self.value = 0

    def advance(self):
        with self._lock:
            self.value = next(self._numbers)
            return self.value


class RowSequences:
    """Per row, the sequence number of its last change; per block of BLOCK_ROWS rows, the
    largest of them. Rows are numbered as the table's."""

    def __init__(self):
        self.rows = Growable((), np.int64)
        self.block_max = Growable((), np.int64)

    def append(self, count, seq):
        """`count` new rows at the end, changed at `seq`."""
        start = self.rows.size
        self.rows.append(np.full(count, seq, dtype=np.int64))
        blocks = (self.rows.size + BLOCK_ROWS - 1) >> BLOCK_SHIFT
        if blocks > self.block_max.size:
            self.block_max.append(np.zeros(blocks - self.block_max.size, dtype=np.int64))
        if count:
            self.block_max.view()[start >> BLOCK_SHIFT:blocks] = seq

    def mark(self, rows, seq):
        """Rows (int indices) changed at `seq`, the newest sequence of all."""
        self.rows.view()[rows] = seq
        self.block_max.view()[np.asarray(rows) >> BLOCK_SHIFT] = seq

    def keep(self, positions):
        """Keeps the rows at `positions` (as the table's remove_rows does) and recomputes the
        blocks' maxima."""
        self.rows.keep(positions)
        seqs = self.rows.view()
        blocks = (seqs.size + BLOCK_ROWS - 1) >> BLOCK_SHIFT
        maxima = np.zeros(blocks, dtype=np.int64)
        if seqs.size:
            np.maximum.reduceat(seqs, np.arange(0, seqs.size, BLOCK_ROWS), out=maxima)
        self.block_max = Growable((), np.int64)
        self.block_max.append(maxima)

    def changed_since(self, seq):
        """The rows (sorted int64 indices) last changed after `seq`: a look at every block's
        maximum, then at the rows of the blocks changed after `seq` only."""
        seqs = self.rows.view()
        dirty = np.flatnonzero(self.block_max.view() > seq)
        if dirty.size == 0:
            return np.zeros(0, dtype=np.int64)
        if dirty.size * 2 > self.block_max.size:  # most blocks: one pass over the rows
            return np.flatnonzero(seqs > seq)
        found = []
        for start in (dirty << BLOCK_SHIFT).tolist():
            block = seqs[start:start + BLOCK_ROWS]
            found.append(np.flatnonzero(block > seq) + start)
        return np.concatenate(found)

    def load_rows(self, seqs):
        """Sets every row's sequence from a copy (as from `rows.view()`)."""
        self.rows = Growable((), np.int64)
        self.rows.append(seqs)
        self.keep(np.arange(self.rows.size))


class Tombstones:
    """The keys whose rows were removed, with the sequence of their removal, for the last
    `limit` keys (about): older batches are dropped whole, and `horizon` is the sequence of
    the newest dropped, before which the log is incomplete."""

    def __init__(self, limit=TOMBSTONE_LIMIT):
        self.limit = int(limit)
        self._seqs = []  # increasing, one per batch
        self._keys = []  # int64 arrays
        self.count = 0
        self.horizon = 0

    def add(self, keys, seq):
        keys = np.asarray(keys, dtype=np.int64).reshape(-1)
        if not keys.size:
            return
        self._seqs.append(int(seq))
        self._keys.append(keys.copy())
        self.count += keys.size
        drop = 0
        while self.count > self.limit and drop < len(self._seqs) - 1:
            self.count -= self._keys[drop].size
            self.horizon = self._seqs[drop]
            drop += 1
        if drop:
            del self._seqs[:drop], self._keys[:drop]

    def since(self, seq):
        """The keys removed after `seq` (each once, sorted); ChangesLost if the log no longer
        reaches back to `seq`."""
        if seq < self.horizon:
            raise ChangesLost(f"the removals after sequence {seq} are no longer kept (the log "
                              f"starts after {self.horizon}); a full copy is needed")
        first = bisect.bisect_right(self._seqs, seq)
        if first == len(self._seqs):
            return np.zeros(0, dtype=np.int64)
        return np.unique(np.concatenate(self._keys[first:]))

    def nbytes(self):
        return self.count * 8
