"""A followed embedding table as a serving process keeps it: psflow's table storage
(psflow.embedding_table), rows set by key and read by key, with removals marked rather than
done at once. Removing rows from the storage renumbers them and rebuilds its key index, a pass
over the table; a mirror takes removals with every few deltas, so it marks the rows dead
(they read as zeros, export skips them, setting the key again revives the row) and compacts
once a quarter of its rows are dead."""

import numpy as np

from psflow.embedding_table import EmbeddingTable
from psflow.key_index import Growable

COMPACT_FRACTION = 0.25


class MirrorTable:
    """Rows of `dim` values by int64 key (see the module's docstring)."""

    def __init__(self, name, dim, dtype):
        self.table = EmbeddingTable(name, dim, dtype)
        self.dead = Growable((), bool)  # row -> removed, not compacted yet
        self.dead_rows = 0

    @property
    def dim(self):
        return self.table.dim

    @property
    def dtype(self):
        return self.table.dtype

    def __len__(self):
        return len(self.table) - self.dead_rows

    def set(self, keys, values):
        """Sets the rows of distinct `keys` to `values` ([n, dim]), creating the missing."""
        self.table.load({"keys": keys, "values": values})
        grown = len(self.table) - self.dead.size
        if grown:
            self.dead.append(np.zeros(grown, dtype=bool))
        dead = self.dead.view()
        rows = self.table.find_rows(keys)
        self.dead_rows -= int(dead[rows].sum())
        dead[rows] = False

    def remove(self, keys):
        """Removes the rows of `keys` (keys without one are ignored)."""
        rows = self.table.find_rows(keys)
        rows = rows[rows >= 0]
        dead = self.dead.view()
        rows = np.unique(rows[~dead[rows]])
        dead[rows] = True
        self.dead_rows += rows.size
        if self.dead_rows > COMPACT_FRACTION * len(self.table):
            self.compact()

    def compact(self):
        """Removes the dead rows from the storage (a pass over the table)."""
        if self.dead_rows:
            self.table.remove_rows(np.flatnonzero(self.dead.view()))
        self.dead = Growable((), bool)
        self.dead.append(np.zeros(len(self.table), dtype=bool))
        self.dead_rows = 0

    def lookup(self, keys):
        """The rows of int64 `keys` ([n] -> [n, dim]), zeros for keys without a live row."""
        rows = self.table.find_rows(keys)
        has = rows >= 0
        has[has] = ~self.dead.view()[rows[has]]
        out = np.zeros((rows.size, self.dim), dtype=self.dtype)
        out[has] = self.table.values.view()[rows[has]]
        return out

    def export(self):
        """(keys, rows) of the live rows."""
        keys, values = self.table.export()
        live = ~self.dead.view()
        return keys[live], values[live]
