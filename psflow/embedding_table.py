"""Hash-keyed embedding tables: one row per int64 key, created on first use, admitted after a
number of sightings, evicted when stale. The store behind `get_embedding_variable`, on the
parameter servers and in a local session alike.

`EmbeddingTable` finds keys with a KeyIndex (psflow.key_index) and keeps, per entry, the key
and how often it was seen, and per row (once admitted) its values, the global step it was last
updated at and its optimizer slots, in contiguous growable arrays. A new row's values come
from psflow.row_init; admission and eviction are decided by psflow.table_policies.
"""

import collections
import time

import numpy as np

from . import table_policies as policies
from .errors import InvalidArgumentError
from .indexed_slices import IndexedSlices
from .key_index import Dedup, Growable, KeyIndex
from .row_init import INITIALIZERS, initial_rows


class EmbeddingTable:
    """One table (or one shard's share of it): entries for every key seen, rows for the
    admitted ones.

    `filter_freq`: a key gets a row once it has been seen that many times (0 or 1: at once);
    until then it reads as zeros and its gradients are dropped. `steps_to_live`: rows not
    updated within that many global steps are removed by `evict` (None: never)."""

    def __init__(self, name, dim, dtype=np.float32, initializer=None, filter_freq=0,
                 steps_to_live=None):
        self.name, self.dim, self.dtype = name, int(dim), np.dtype(dtype)
        self.initializer = dict(initializer or {"kind": "zeros"})
        if self.initializer["kind"] not in INITIALIZERS:
            raise InvalidArgumentError(f"table {name!r}: unknown initializer "
                                       f"{self.initializer['kind']!r}")
        self.filter_freq = int(filter_freq or 0)
        self.steps_to_live = int(steps_to_live) if steps_to_live else None
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
        self._copying = 0  # copies for a checkpoint under way (see copy_state)
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
        freq = self.freq.view()
        if policies.counts_sightings(self.filter_freq):
            policies.count_sightings(freq, entries, counts)
        row_of = self.row_of.view()
        waiting = row_of[entries] < 0
        if waiting.any():
            admit = waiting & policies.admitted(freq[entries], self.filter_freq)
            if admit.any():
                self._admit(entries[admit], keys[admit], global_step)
            self.stats["filtered"] += int((waiting & ~admit).sum())
        return self._rows_of_entries(entries)

    def _rows_of_entries(self, entries):
        rows = np.full(entries.size, -1, dtype=np.int64)
        known = entries >= 0
        rows[known] = self.row_of.view()[entries[known]]
        out = np.zeros((entries.size, self.dim), dtype=self.dtype)
        has = rows >= 0
        out[has] = self.values.array[rows[has]]
        return out

    def _admit(self, entries, keys, global_step):
        start = self.values.size
        self.values.append(initial_rows(self.initializer, keys, self.dim, self.dtype))
        self.row_keys.append(keys)
        self.last_step.append(np.full(keys.size, global_step, dtype=np.int64))
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

    def remove_rows(self, rows):
        """Removes rows (and their keys' entries); the others keep their values and slots."""
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
        for rule_slots in self.slots.values():
            for slot in rule_slots.values():
                if isinstance(slot, Growable):
                    slot.keep(positions)
        # entries: drop the evicted keys', renumber rows
        entry_keys = self.index.keys_by_entry()
        entries_kept = ~np.isin(entry_keys, gone_keys)
        new_row = np.full(keep_rows.size, -1, dtype=np.int64)
        new_row[positions] = np.arange(positions.size)
        row_of = self.row_of.view()[entries_kept]
        row_of = np.where(row_of >= 0, new_row[np.maximum(row_of, 0)], -1)
        entry_positions = np.flatnonzero(entries_kept)
        self.freq.keep(entry_positions)
        self.row_of = Growable((), np.int32)
        self.row_of.append(row_of)
        self.index.rebuild(entry_keys[entry_positions])

    # -- state ----------------------------------------------------------------------------------
    def export(self):
        """(keys, values) of the rows, as arrays."""
        return self.row_keys.view().copy(), self.values.view().copy()

    def state(self):
        """Everything a checkpoint keeps: {name: array}."""
        out = {"keys": self.row_keys.view(), "values": self.values.view(),
               "last_step": self.last_step.view(),
               "entry_keys": self.index.keys_by_entry(), "entry_freq": self.freq.view()}
        for rule, rule_slots in self.slots.items():
            for name, slot in rule_slots.items():
                out[f"slot/{rule}/{name}"] = slot.view() if isinstance(slot, Growable) \
                    else slot
        return out

    def copy_state(self, lock, chunk_rows=1 << 16):
        """A copy of state() taken a chunk of rows at a time, holding `lock` (the table's) for
        one chunk at a time so that training goes on in between; returns (state, the longest
        hold in seconds). Rows added meanwhile are left for the next copy, and eviction waits
        until the copy is done; each row is copied whole (values, step and slots at once)."""
        longest = 0.0

        def held(fn):
            nonlocal longest
            with lock:
                started = time.monotonic()
                result = fn()
                longest = max(longest, time.monotonic() - started)
            return result

        def begin():
            self._copying += 1
            fields = self.state_layout()
            rows, entries = self.values.size, self.index.size
            return fields, rows, entries

        fields, rows, entries = held(begin)
        try:
            out = {name: np.empty((entries if per == "entry" else rows,) + shape, dtype)
                   for name, (per, shape, dtype) in fields.items() if per != "scalar"}
            for start in range(0, max(rows, entries), chunk_rows):
                def copy(start=start):
                    for name, (per, _, _) in fields.items():
                        if per == "scalar":
                            continue
                        stop = min(start + chunk_rows, entries if per == "entry" else rows)
                        if stop > start:
                            out[name][start:stop] = self._field(name)[start:stop]
                held(copy)
            for name, (per, _, _) in fields.items():
                if per == "scalar":
                    out[name] = held(lambda name=name: np.array(self._field(name), copy=True))
        finally:
            held(lambda: setattr(self, "_copying", self._copying - 1))
        return out, longest

    def state_layout(self):
        """{field: ("row" | "entry" | "scalar", row shape, dtype)} of state()."""
        layout = {"keys": ("row", (), np.dtype(np.int64)),
                  "values": ("row", (self.dim,), self.dtype),
                  "last_step": ("row", (), self.last_step.dtype),
                  "entry_keys": ("entry", (), np.dtype(np.int64)),
                  "entry_freq": ("entry", (), self.freq.dtype)}
        for rule, rule_slots in self.slots.items():
            for name, slot in rule_slots.items():
                if isinstance(slot, Growable):
                    layout[f"slot/{rule}/{name}"] = ("row", slot.row_shape, slot.dtype)
                else:
                    layout[f"slot/{rule}/{name}"] = ("scalar", slot.shape, slot.dtype)
        return layout

    def _field(self, name):
        if name == "keys":
            return self.row_keys.array
        if name == "values":
            return self.values.array
        if name == "last_step":
            return self.last_step.array
        if name == "entry_freq":
            return self.freq.array
        if name == "entry_keys":
            return self.index._keys.array
        _, rule, slot = name.split("/", 2)
        found = self.slots[rule][slot]
        return found.array if isinstance(found, Growable) else found

    def load(self, state, rules=None):
        """Sets the rows of a checkpoint's `state` (as from state(), possibly a selection of
        another shard's rows): a key that has a row already takes the checkpoint's (so loading
        again is harmless). `rules` {name: UpdateRule} makes the slots now; otherwise they
        are set when their rule first applies. Everything is checked before anything
        changes."""
        keys = np.asarray(state["keys"], dtype=np.int64).reshape(-1)
        values = np.asarray(state["values"])
        if values.ndim != 2 or values.shape[1] != self.dim:
            raise InvalidArgumentError(f"table {self.name!r} has dimension {self.dim}, but "
                                       f"the checkpoint's rows have shape {values.shape}")
        if values.shape[0] != keys.size or np.unique(keys).size != keys.size:
            raise InvalidArgumentError(f"table {self.name!r}: the checkpoint has "
                                       f"{keys.size} keys (each once) for {values.shape[0]} "
                                       "rows")
        last_step = np.asarray(state.get("last_step", np.zeros(keys.size)), dtype=np.int64)
        entry_keys = np.asarray(state.get("entry_keys", keys), dtype=np.int64).reshape(-1)
        entry_freq = state.get("entry_freq")
        if last_step.shape != keys.shape or (entry_freq is not None and
                                             np.shape(entry_freq) != entry_keys.shape):
            raise InvalidArgumentError(f"table {self.name!r}: the checkpoint's steps or "
                                       "counts do not match its keys")
        slot_arrays = []
        for key, array in state.items():
            if not key.startswith("slot/"):
                continue
            parts = key.split("/")
            if len(parts) != 3:
                raise InvalidArgumentError(f"table {self.name!r}: unknown field {key!r}")
            array = np.asarray(array)
            if array.ndim and array.shape != (keys.size, self.dim):
                raise InvalidArgumentError(f"table {self.name!r}: slot {parts[1]}/{parts[2]} "
                                           f"has shape {array.shape}, expected "
                                           f"({keys.size}, {self.dim})")
            slot_arrays.append((parts[1], parts[2], array))
        # entries: every key seen, with its count when the checkpoint has them
        entries, new = self.index.insert(np.concatenate([entry_keys, keys]))
        if new.any():
            self.freq.append(np.zeros(int(new.sum()), dtype=np.int32))
            self.row_of.append(np.full(int(new.sum()), -1, dtype=np.int32))
        if entry_freq is not None:
            self.freq.view()[entries[:entry_keys.size]] = policies.saturated(entry_freq)
        row_entries = entries[entry_keys.size:]
        rows = self.row_of.view()[row_entries].astype(np.int64)
        fresh = rows < 0
        start = self.values.size
        rows[fresh] = np.arange(start, start + int(fresh.sum()))
        self.values.append(values[fresh])
        self.row_keys.append(keys[fresh])
        self.last_step.append(last_step[fresh])
        self.values.array[rows[~fresh]] = values[~fresh]
        self.last_step.array[rows[~fresh]] = last_step[~fresh]
        self.row_of.view()[row_entries] = rows
        for rule_slots in self.slots.values():  # slots of rules the checkpoint lacks
            for name, slot in rule_slots.items():
                if isinstance(slot, Growable) and slot.size < self.values.size:
                    rule = next(r for r, s in self.slots.items() if s is rule_slots)
                    slot.append(np.broadcast_to(self._slot_rows[(rule, name)],
                                                (self.values.size - slot.size, self.dim)))
        for rule_name, slot_name, array in slot_arrays:
            if rules is not None and rule_name in rules:
                self._slots_for(rules[rule_name])
            slots = self.slots.get(rule_name)
            if slots is None:  # the rule is not known yet: set when it first applies
                self._pending.setdefault(rule_name, []).append((slot_name, rows, array))
                continue
            self._set_slot(slots, slot_name, rows, array)

    @staticmethod
    def _set_slot(slots, slot_name, rows, array):
        slot = slots.get(slot_name)
        if isinstance(slot, Growable):
            slot.array[rows] = array
        elif slot is not None:
            slots[slot_name] = np.array(array, dtype=slot.dtype)

    def nbytes(self):
        """Bytes held: the index, the entries, the rows and their slots."""
        total = self.index.nbytes + sum(g.nbytes for g in (
            self.freq, self.row_of, self.values, self.row_keys, self.last_step))
        for rule_slots in self.slots.values():
            total += sum(s.nbytes for s in rule_slots.values())
        return total
