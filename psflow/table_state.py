"""What a checkpoint keeps of an embedding table, and loading it back: the fields of
`EmbeddingTable.state()` (keys, values, last steps, entries and their counts, slots), copied a
chunk at a time while training goes on (`copy_state`) and set again by `load`. A mixin of
psflow.embedding_table.EmbeddingTable, apart so that each file reads in one sitting."""

import time

import numpy as np

from . import table_policies as policies
from .errors import InvalidArgumentError
from .key_index import Growable


class TableState:
    """The checkpoint side of EmbeddingTable (which supplies the arrays)."""

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

    def state_chunks(self, lock, chunk_rows=1 << 15):
        """state() as a series of dicts of at most `chunk_rows` rows and entries each (a range
        of the rows' fields and of the entries' fields, every scalar slot whole), each taken
        holding `lock` (the table's) so that training goes on in between; `load` takes each.
        As for copy_state, the rows keep their places meanwhile (eviction and the cap wait)
        and rows added meanwhile are left out: a reader takes the changes after the clock's
        value read before the first chunk to catch up."""
        with lock:
            self._copying += 1
            rows, entries = self.values.size, self.index.size
        try:
            for start in range(0, max(rows, entries, 1), chunk_rows):
                with lock:
                    chunk = {}
                    for name, (per, _, _) in self.state_layout().items():
                        field = self._field(name)
                        if per == "scalar":
                            chunk[name] = np.array(field, copy=True)
                            continue
                        stop = min(start + chunk_rows, entries if per == "entry" else rows)
                        chunk[name] = field[start:max(stop, start)].copy()
                yield chunk
        finally:
            with lock:
                self._copying -= 1

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
        seq = self.clock.advance()
        if new.any():
            self.freq.append(np.zeros(int(new.sum()), dtype=np.int32))
            self.row_of.append(np.full(int(new.sum()), -1, dtype=np.int32))
            self.entry_seq.append(int(new.sum()), seq)
        if entry_freq is not None:
            self.freq.view()[entries[:entry_keys.size]] = policies.saturated(entry_freq)
            self.entry_seq.mark(entries[:entry_keys.size], seq)
        row_entries = entries[entry_keys.size:]
        rows = self.row_of.view()[row_entries].astype(np.int64)
        fresh = rows < 0
        start = self.values.size
        rows[fresh] = np.arange(start, start + int(fresh.sum()))
        self.values.append(values[fresh])
        self.row_keys.append(keys[fresh])
        self.last_step.append(last_step[fresh])
        self.row_seq.append(int(fresh.sum()), seq)
        self.values.array[rows[~fresh]] = values[~fresh]
        self.last_step.array[rows[~fresh]] = last_step[~fresh]
        self.row_seq.mark(rows[~fresh], seq)
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
        if self.max_rows is not None and len(self) > self.max_rows:  # a cap below the rows
            self._cap(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))

    @staticmethod
    def _set_slot(slots, slot_name, rows, array):
        slot = slots.get(slot_name)
        if isinstance(slot, Growable):
            slot.array[rows] = array
        elif slot is not None:
            slots[slot_name] = np.array(array, dtype=slot.dtype)

