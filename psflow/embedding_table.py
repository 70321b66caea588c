"""Hash-keyed embedding tables: one row per int64 key, created on first use, admitted after a
number of sightings, evicted when stale. The store behind `get_embedding_variable`, on the
parameter servers and in a local session alike.

`EmbeddingTable` finds keys with a KeyIndex (psflow.key_index) and keeps, per entry, the key
and how often it was seen, and per row (once admitted) its values, the global step it was last
updated at and its optimizer slots, in contiguous growable arrays. A new row's values come
from psflow.row_init; admission and eviction are decided by psflow.table_policies.

Every change takes a sequence number from the table's ChangeClock (its shard's), kept per row
and, for removed rows, in a log of tombstones: `changes_since` reads them (psflow.table_changes).
What a checkpoint keeps, and loading it, are in psflow.table_state.
"""

import collections

import numpy as np

from . import table_policies as policies
from .errors import InvalidArgumentError
from .indexed_slices import IndexedSlices
from .key_index import Dedup, Growable, KeyIndex
from .row_init import INITIALIZERS, initial_rows
from .table_changes import TOMBSTONE_LIMIT, ChangeClock, Changes, RowSequences, Tombstones
from .table_state import TableState


class EmbeddingTable(TableState):
    """One table (or one shard's share of it): entries for every key seen, rows for the
    admitted ones.

    `filter_freq`: a key gets a row once it has been seen that many times (0 or 1: at once);
    until then it reads as zeros and its gradients are dropped. `steps_to_live`: rows not
    updated within that many global steps are removed by `evict` (None: never). `max_rows`:
    a training lookup that would give the table more rows removes the least recently updated
    ones first (see `_cap`; None: no cap). `clock`: the ChangeClock the table's changes take
    their sequence numbers from (a shard's, shared by its tables; default: its own);
    `tombstone_limit`: how many removed keys `changes_since` can report (about)."""

    def __init__(self, name, dim, dtype=np.float32, initializer=None, filter_freq=0,
                 steps_to_live=None, max_rows=None, clock=None, tombstone_limit=TOMBSTONE_LIMIT):
        self.name, self.dim, self.dtype = name, int(dim), np.dtype(dtype)
        self.initializer = dict(initializer or {"kind": "zeros"})
        if self.initializer["kind"] not in INITIALIZERS:
            raise InvalidArgumentError(f"table {name!r}: unknown initializer "
                                       f"{self.initializer['kind']!r}")
        self.filter_freq = int(filter_freq or 0)
        self.steps_to_live = int(steps_to_live) if steps_to_live else None
        if max_rows is not None and int(max_rows) < 1:
            raise InvalidArgumentError(f"table {name!r}: max_rows must be positive, got "
                                       f"{max_rows}")
        self.max_rows = int(max_rows) if max_rows else None
        self.clock = clock if clock is not None else ChangeClock()
        self.row_seq = RowSequences()  # row -> sequence of its last change
        self.entry_seq = RowSequences()  # entry -> sequence of its last sighting counted
        self.tombstones = Tombstones(tombstone_limit)
        self.index = KeyIndex()
        # per entry (a key seen): its sightings and its row (-1 before admission)
        self.freq = Growable((), np.int32)
        self.row_of = Growable((), np.int32)
        self.values = Growable((self.dim,), self.dtype)
        self.row_keys = Growable((), np.int64)  # row -> key
        self.last_step = Growable((), np.int32)  # row -> global step of its last update
        self.slots = {}  # rule name -> {slot name: Growable of rows, or a scalar array}
        self._slot_rows = {}  # (rule name, slot name) -> a new row's slot value
        # The entries of the last few lookups' keys: a step's gradient for the same keys
        # (the usual case) finds them without probing the index again.
        self._recent = collections.OrderedDict()
        self._pending = {}  # rule name -> [(slot name, rows, array)] loaded before use
        self._copying = 0  # copies under way (see copy_state, changes_in_chunks)
        self.stats = {"created": 0, "filtered": 0, "evicted": 0, "dropped_gradients": 0}

    def __len__(self):
        return self.values.size

    @property
    def shape(self):
        return (self.values.size, self.dim)

    def check_keys(self, keys, what):
        keys = np.asarray(keys)
        if keys.dtype.kind not in "iu":
            raise InvalidArgumentError(f"{what} table {self.name!r}: keys must be integers "
                                       f"(int64), got {keys.dtype.name}")
        if keys.dtype == np.uint64 and keys.size and keys.max() > np.iinfo(np.int64).max:
            raise InvalidArgumentError(f"{what} table {self.name!r}: key {keys.max()} does "
                                       "not fit int64")
        return np.ascontiguousarray(keys, dtype=np.int64).reshape(-1)

    # -- reads --------------------------------------------------------------------------------
    def lookup(self, keys, counts=None, train=True, global_step=0):
        """Rows for `keys`, shape (len(keys), dim). Training lookups create the
        entries of new keys, count each key `counts` times (default once) and give a key its
        row (with the initializer) once it has been seen `filter_freq` times; others only
        read. Keys without a row read as zeros."""
        keys = self.check_keys(keys, "lookup in")
        inverse = None
        if keys.size > 1 and not (keys[1:] > keys[:-1]).all():  # not sorted and distinct
            found = Dedup(keys)
            keys, inverse = found.unique, found.inverse
            counts = found.counts() if counts is None else found.sum_rows(
                np.asarray(counts, dtype=np.int64).reshape(-1))
        rows = self._lookup(keys, counts, train, global_step)
        return rows if inverse is None else rows[inverse]

    RECENT = 8

    def _remember(self, keys, entries):
        recent = self._recent
        recent[hash(keys.tobytes())] = (keys, entries)
        while len(recent) > self.RECENT:
            recent.popitem(last=False)

    def _entries(self, keys):
        """The entries of keys present (-1 for the others), from a recent lookup of the same
        keys when there is one."""
        known = self._recent.get(hash(keys.tobytes()))
        if known is not None and np.array_equal(known[0], keys):
            return known[1]
        return self.index.find(keys)

    def _lookup(self, keys, counts, train, global_step):
        if not train:
            entries = self.index.find(keys)
            return self._rows_of_entries(entries)
        entries, new = self.index.insert(keys)
        self._remember(keys, entries)
        fresh = int(new.sum())
        if fresh:
            self.freq.append(np.zeros(fresh, dtype=np.int32))
            self.row_of.append(np.full(fresh, -1, dtype=np.int32))
            self.entry_seq.append(fresh, 0)
        freq = self.freq.view()
        if policies.counts_sightings(self.filter_freq):
            policies.count_sightings(freq, entries, counts)
            self.entry_seq.mark(entries, self.clock.advance())
        row_of = self.row_of.view()
        waiting = row_of[entries] < 0
        if waiting.any():
            admit = waiting & policies.admitted(freq[entries], self.filter_freq)
            if admit.any():
                self._admit(entries[admit], keys[admit], global_step)
                if self.max_rows is not None and self.values.size > self.max_rows:
                    entries = self._cap(keys, entries)
            self.stats["filtered"] += int((waiting & ~admit).sum())
        return self._rows_of_entries(entries)

    def _cap(self, keys, entries):
        """Brings the table back within max_rows after a lookup of `keys` (at `entries`)
        created rows: removes the least recently updated rows, never those of `keys`; returns
        the keys' entries as renumbered. While a copy for a checkpoint is under way, rows keep
        their places and the cap waits for the next lookup."""
        count = policies.rows_over_cap(self.values.size, self.max_rows)
        if not count or self._copying:
            return entries
        row_of = self.row_of.view()
        batch_rows = row_of[entries[entries >= 0]]
        gone = policies.least_recent_rows(self.last_step.view(), self.row_seq.rows.view(),
                                          count, batch_rows[batch_rows >= 0])
        if not gone.size:
            return entries
        self.remove_rows(gone)
        self.stats["evicted"] += int(gone.size)
        entries = self.index.find(keys)
        self._remember(keys, entries)
        return entries

    def find_rows(self, keys):
        """The row number of each of `keys` (int64), -1 for keys without a row; row numbers
        hold until rows are removed."""
        return self._row_numbers(self.index.find(self.check_keys(keys, "finding keys in")))

    def _row_numbers(self, entries):
        rows = np.full(entries.size, -1, dtype=np.int64)
        known = entries >= 0
        rows[known] = self.row_of.view()[entries[known]]
        return rows

    def _rows_of_entries(self, entries):
        rows = self._row_numbers(entries)
        out = np.zeros((entries.size, self.dim), dtype=self.dtype)
        has = rows >= 0
        out[has] = self.values.array[rows[has]]
        return out

    def _admit(self, entries, keys, global_step):
        start = self.values.size
        self.values.append(initial_rows(self.initializer, keys, self.dim, self.dtype))
        self.row_keys.append(keys)
        self.last_step.append(np.full(keys.size, global_step, dtype=np.int64))
        self.row_seq.append(keys.size, self.clock.advance())
        self.row_of.view()[entries] = np.arange(start, start + keys.size)
        for rule_name, rule_slots in self.slots.items():
            for name, slot in rule_slots.items():
                if isinstance(slot, Growable):
                    slot.append(np.broadcast_to(self._slot_rows[(rule_name, name)],
                                                (keys.size, self.dim)))
        self.stats["created"] += int(keys.size)

    # -- updates ------------------------------------------------------------------------------
    def apply(self, rule, keys, grads, global_step=0):
        """Applies `rule` to the rows of distinct `keys` with gradient rows `grads`; keys
        without a row (unseen, or not admitted yet) drop their gradients (counted)."""
        keys = self.check_keys(keys, "gradient for")
        grads = np.asarray(grads)
        if grads.shape != (keys.size, self.dim):
            raise InvalidArgumentError(f"gradient for table {self.name!r} has shape "
                                       f"{grads.shape}, expected ({keys.size}, {self.dim})")
        entries = self._entries(keys)
        rows = np.full(keys.size, -1, dtype=np.int64)
        known = entries >= 0
        rows[known] = self.row_of.view()[entries[known]]
        has = rows >= 0
        self.stats["dropped_gradients"] += int((~has).sum())
        if not has.any():
            return
        rows, grads = rows[has], grads[has]
        order = np.argsort(rows, kind="stable")  # sorted, distinct rows: no dedup in the rule
        rows, grads = rows[order], grads[order]
        slots = self._slots_for(rule)
        value = self.values.array[:self.values.size]
        views = {name: (s.array[:s.size] if isinstance(s, Growable) else s)
                 for name, s in slots.items()}
        rule.apply(value, IndexedSlices(grads.astype(self.dtype, copy=False), rows,
                                        value.shape), views)
        self.last_step.view()[rows] = global_step
        self.row_seq.mark(rows, self.clock.advance())

    def _slots_for(self, rule):
        slots = self.slots.get(rule.name)
        if slots is None:
            probe = rule.init_slots(np.zeros((1, self.dim), dtype=self.dtype))
            slots = {}
            for name, array in probe.items():
                if array.shape == (1, self.dim):  # one row per row of the table
                    row = array[0].copy()
                    self._slot_rows[(rule.name, name)] = row
                    grown = Growable((self.dim,), array.dtype, self.values.array.shape[0])
                    grown.append(np.broadcast_to(row, (self.values.size, self.dim)))
                    slots[name] = grown
                else:  # a per-table scalar (Adam's step count)
                    slots[name] = array.copy()
            self.slots[rule.name] = slots
            for slot_name, rows, array in self._pending.pop(rule.name, []):
                self._set_slot(slots, slot_name, rows, array)
            if self.values.size and any(isinstance(s, Growable) for s in slots.values()):
                # every row has new slots: changed (a delta of the table carries them)
                self.row_seq.mark(np.arange(self.values.size), self.clock.advance())
        return slots

    # -- eviction -----------------------------------------------------------------------------
    def evict(self, global_step):
        """Removes the rows not updated within `steps_to_live` global steps (and their
        entries); returns how many. Without steps_to_live, nothing."""
        if self.steps_to_live is None or not self.values.size or self._copying:
            return 0  # (a copy for a checkpoint is under way: rows must keep their places)
        stale = policies.stale_rows(self.last_step.view(), global_step, self.steps_to_live)
        count = int(stale.sum())
        if count:
            self.remove_rows(np.flatnonzero(stale))
            self.stats["evicted"] += count
        return count

    def remove_rows(self, rows, entry_keys_too=None):
        """Removes rows (and their keys' entries, and those of `entry_keys_too`); the others
        keep their values and slots."""
        self._recent.clear()  # entries are renumbered
        keep_rows = np.ones(self.values.size, dtype=bool)
        keep_rows[rows] = False
        gone_keys = self.row_keys.view()[~keep_rows]
        positions = np.flatnonzero(keep_rows)
        renumbered = np.cumsum(keep_rows) - 1
        for rule_name, pending in self._pending.items():
            self._pending[rule_name] = [
                (slot_name, renumbered[rows[keep_rows[rows]]],
                 array[keep_rows[rows]] if array.ndim else array)
                for slot_name, rows, array in pending]
        for grown in (self.values, self.row_keys, self.last_step):
            grown.keep(positions)
        self.row_seq.keep(positions)
        self.tombstones.add(gone_keys, self.clock.advance())
        for rule_slots in self.slots.values():
            for slot in rule_slots.values():
                if isinstance(slot, Growable):
                    slot.keep(positions)
        # entries: drop the evicted keys', renumber rows
        entry_keys = self.index.keys_by_entry()
        if entry_keys_too is not None:
            gone_keys = np.concatenate([gone_keys, entry_keys_too])
        entries_kept = ~np.isin(entry_keys, gone_keys)
        new_row = np.full(keep_rows.size, -1, dtype=np.int64)
        new_row[positions] = np.arange(positions.size)
        row_of = self.row_of.view()[entries_kept]
        row_of = np.where(row_of >= 0, new_row[np.maximum(row_of, 0)], -1)
        entry_positions = np.flatnonzero(entries_kept)
        self.freq.keep(entry_positions)
        self.entry_seq.keep(entry_positions)
        self.row_of = Growable((), np.int32)
        self.row_of.append(row_of)
        self.index.rebuild(entry_keys[entry_positions])

    def remove_keys(self, keys):
        """Removes the rows of `keys` and the keys' entries (their sightings are forgotten, as
        an eviction forgets them; keys never seen are ignored); returns how many rows."""
        keys = self.check_keys(keys, "removing from")
        entries = self.index.find(keys)
        rows = self._row_numbers(entries)
        if (entries >= 0).any():
            self.remove_rows(rows[rows >= 0], keys[(entries >= 0) & (rows < 0)])
        rows = rows[rows >= 0]
        return int(rows.size)

    # -- changes ------------------------------------------------------------------------------
    def changes_since(self, seq, with_state=False):
        """"Rows changed since X": a Changes(keys, values, removed, upto, state) of what changed
        after sequence `seq` (0: everything, as a full copy): the keys and current values of
        the rows changed after it, the keys whose rows were removed after it and have none
        now, and `upto`, the sequence all of the table's changes are in them up to; with
        `with_state`, `state` holds those rows' fields as state() gives them (their last
        steps and optimizer slots too, and the sighting counts changed since), which `load`
        sets on another table. The one way
        anything follows a table (the parameter stream reads values, replica catch-up and
        incremental checkpoints the state); the caller holds the table's lock, as for any
        read. Costs the rows changed and one look per block of rows, not a copy of the table;
        ChangesLost when `seq` is older than the removals the table still knows."""
        seq = int(seq)
        upto = self.clock.value
        if seq <= 0:
            removed = np.zeros(0, dtype=np.int64)
            rows = np.arange(self.values.size)
        else:
            removed = self.tombstones.since(seq)
            rows = self.row_seq.changed_since(seq)
        keys = self.row_keys.view()[rows]
        values = self.values.view()[rows]
        if removed.size and keys.size:  # removed, then created again: a row now
            removed = removed[~np.isin(removed, keys)]
        state = None
        if with_state:
            entries = np.arange(self.index.size) if seq <= 0 else \
                self.entry_seq.changed_since(seq)
            state = {"keys": keys, "values": values, "last_step": self.last_step.view()[rows],
                     "entry_keys": self.index.keys_by_entry()[entries],
                     "entry_freq": self.freq.view()[entries]}
            for rule, rule_slots in self.slots.items():
                for name, slot in rule_slots.items():
                    state[f"slot/{rule}/{name}"] = slot.view()[rows] \
                        if isinstance(slot, Growable) else slot.copy()
        return Changes(keys, values, removed, upto, state)

    def changes_in_chunks(self, lock, seq, chunk_rows=1 << 16):
        """changes_since(seq) as a series of Changes of at most `chunk_rows` rows each,
        holding `lock` (the table's) for one at a time so that training goes on in between:
        a full copy (`seq` 0) reads the rows a range at a time while they keep their places
        (eviction and the cap wait, as for a checkpoint's copy); rows created or changed
        meanwhile are newer than the first chunk's `upto` and so in the changes after it.
        Later changes are read at once (they cost the rows changed)."""
        if seq > 0:
            with lock:
                yield self.changes_since(seq)
            return
        with lock:
            self._copying += 1
            rows, upto = self.values.size, self.clock.value
        try:
            empty = np.zeros(0, dtype=np.int64)
            for start in range(0, max(rows, 1), chunk_rows):
                stop = min(start + chunk_rows, rows)
                with lock:
                    chunk = Changes(self.row_keys.array[start:stop].copy(),
                                    self.values.array[start:stop].copy(), empty, upto, None)
                yield chunk
        finally:
            with lock:
                self._copying -= 1

    # -- state ----------------------------------------------------------------------------------
    def export(self):
        """(keys, values) of the rows, as arrays."""
        return self.row_keys.view().copy(), self.values.view().copy()

    def nbytes(self):
        """Bytes held: the index, the entries, the rows and their slots."""
        total = self.index.nbytes + sum(g.nbytes for g in (
            self.freq, self.row_of, self.values, self.row_keys, self.last_step))
        for rule_slots in self.slots.values():
            total += sum(s.nbytes for s in rule_slots.values())
        return total + self.row_seq.rows.nbytes + self.tombstones.nbytes()
