"""Hash-keyed embedding tables: one row per int64 key, created on first use, admitted after a
number of sightings, evicted when stale. The store behind `get_embedding_variable`, on the
parameter servers and in a local session alike.

`KeyIndex` maps int64 keys (any value, negative included) to entry numbers with open
addressing and linear probing over numpy arrays: a batch of keys is found or inserted with
array operations, a few passes over the keys still probing, never a Python loop per key, and
an entry costs about 30 bytes (a dict costs over 100). `EmbeddingTable` keeps, per entry, the
key, how often it was seen, the global step it was last updated at and its row of values (once
admitted); values and optimizer slots live in contiguous growable arrays. Arrays grow by
doubling with np.empty, so memory not yet used is never touched and costs no resident memory.
"""

import collections
import time
import zlib

import numpy as np

from .errors import InvalidArgumentError

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MAX_LOAD = 0.5


def mix64(x):
    """splitmix64's finalizer over uint64 arrays: a bijection that scatters nearby keys."""
    with np.errstate(over="ignore"):
        x = np.asarray(x, dtype=np.uint64)
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def shard_of_keys(keys, num_shards):
    """The parameter-server shard of each key: a hash of the key over all shards (the same
    for every worker and every shard count's restore)."""
    if num_shards == 1:
        return np.zeros(np.shape(keys), dtype=np.intp)
    hashed = mix64(np.asarray(keys, dtype=np.int64).view(np.uint64) ^ _GOLDEN)
    return (hashed % np.uint64(num_shards)).astype(np.intp)


def array_key(array):
    """What tells one array's contents from another's while both are alive: a contiguous
    array and its reshapes share a key."""
    address = array.__array_interface__["data"][0]
    if array.flags.c_contiguous:
        return (address, array.size, array.dtype.str)
    return (address, array.shape, array.strides, array.dtype.str)


class Dedup:
    """The distinct ids of a lookup: `unique` (sorted), `inverse` (the position in `unique`
    of each id) and, to sum a gradient's rows by id, the ids' sort order and where each
    distinct id's run starts in it."""

    __slots__ = ("unique", "inverse", "order", "starts")

    def __init__(self, ids):
        flat = ids.reshape(-1).astype(np.int64, copy=False)
        order = np.argsort(flat)
        ordered = flat[order]
        first = np.empty(flat.size, dtype=bool)
        first[:1] = True
        np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
        self.unique = ordered[first]
        self.starts = np.flatnonzero(first)
        self.inverse = np.empty(flat.size, dtype=np.intp)
        self.inverse[order] = np.cumsum(first) - 1
        self.order = order

    def counts(self):
        """How often each distinct id occurs."""
        return np.diff(np.append(self.starts, self.order.size)).astype(np.int64)

    def sum_rows(self, values):
        """The rows of `values` (one per id) summed per distinct id, in `unique`'s order."""
        if self.unique.size == self.order.size:
            return values[self.order]
        return np.add.reduceat(values[self.order], self.starts, axis=0)


class RunDedups:
    """The Dedup of every ids array one run looks up, computed once whoever asks for it (the
    run's lookups and their gradients). `clear` when a run starts: the arrays are the run's,
    and a key names an array only while it is alive."""

    __slots__ = ("_known",)

    def __init__(self):
        self._known = {}  # array key -> (the array, kept alive while its key is, its Dedup)

    def clear(self):
        self._known = {}

    def __call__(self, ids):
        key = array_key(ids)
        found = self._known.get(key)
        if found is None:
            found = self._known[key] = (ids, Dedup(ids))
        return found[1]


class KeyIndex:
    """int64 key -> entry number (0, 1, 2, ... in insertion order). The slots hold entry
    numbers (4 bytes each, at most half of them used, so probe runs stay short); the keys
    are kept once, by entry."""

    def __init__(self, capacity=1024):
        capacity = 1 << max(int(np.ceil(np.log2(max(capacity, 16)))), 4)
        self._slot_entries = np.zeros(capacity, dtype=np.int32)  # entry + 1; 0 is empty
        self._keys = Growable((), np.int64)  # entry -> key
        self.size = 0

    @property
    def capacity(self):
        return self._slot_entries.size

    @property
    def nbytes(self):
        return self._slot_entries.nbytes + self._keys.nbytes

    def _start(self, keys):
        mask = np.uint64(self.capacity - 1)
        return (mix64(keys.view(np.uint64)) & mask).astype(np.intp)

    def find(self, keys):
        """Entry numbers of `keys` (int64 array), -1 where a key is absent."""
        keys = np.ascontiguousarray(keys, dtype=np.int64).reshape(-1)
        found = np.full(keys.size, -1, dtype=np.int64)
        pending = np.arange(keys.size)
        position = self._start(keys)
        mask = self.capacity - 1
        slot_entries, entry_keys = self._slot_entries, self._keys.array
        while pending.size:
            entries = slot_entries[position].astype(np.int64) - 1
            occupied = entries >= 0
            match = occupied.copy()
            match[occupied] = entry_keys[entries[occupied]] == keys[pending[occupied]]
            found[pending[match]] = entries[match]
            going_on = occupied & ~match
            pending = pending[going_on]
            position = (position[going_on] + 1) & mask
        return found

    def insert(self, keys):
        """Entry numbers of `keys`, adding the keys not present yet (numbered in order of
        first appearance); returns (entries, a bool mask of the positions of `keys` where a
        new key first appears)."""
        keys = np.ascontiguousarray(keys, dtype=np.int64).reshape(-1)
        entries = self.find(keys)
        missing = entries < 0
        new = np.zeros(keys.size, dtype=bool)
        if missing.any():
            absent = keys[missing]
            distinct, first, inverse = np.unique(absent, return_index=True,
                                                 return_inverse=True)
            order = np.argsort(first, kind="stable")  # number them as they first appear
            rank = np.empty(order.size, dtype=np.int64)
            rank[order] = np.arange(order.size)
            numbers = self.size + rank
            self._keys.append(distinct[order])
            self._reserve(self.size + distinct.size)
            self._place(numbers)
            self.size += distinct.size
            entries[missing] = numbers[inverse.reshape(-1)]
            new_positions = np.flatnonzero(missing)[first]
            new[new_positions] = True
        return entries, new

    def _reserve(self, size):
        if size <= self.capacity * MAX_LOAD:
            return
        capacity = self.capacity
        while size > capacity * MAX_LOAD:
            capacity *= 2
        self._slot_entries = np.zeros(capacity, dtype=np.int32)
        self._place(np.arange(self.size, dtype=np.int64))

    def _place(self, numbers):
        """Puts entries `numbers` (their keys in self._keys, none in the slots) into free
        slots."""
        mask = self.capacity - 1
        keys = self._keys.array[numbers]
        position = self._start(keys)
        pending = np.arange(keys.size)
        slot_entries = self._slot_entries
        while pending.size:
            free = slot_entries[position] == 0
            candidates, spots = pending[free], position[free]
            spots, first = np.unique(spots, return_index=True)  # one key per free slot
            winners = candidates[first]
            slot_entries[spots] = (numbers[winners] + 1).astype(np.int32)
            placed = np.zeros(keys.size, dtype=bool)
            placed[winners] = True
            going_on = ~placed[pending]
            pending = pending[going_on]
            position = (position[going_on] + 1) & mask

    def keys_by_entry(self):
        """The keys, at their entry numbers."""
        return self._keys.view()

    def rebuild(self, keys):
        """Drops every key and inserts `keys` (distinct) as entries 0, 1, ..."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        self._slot_entries = np.zeros(16, dtype=np.int32)
        self._keys = Growable((), np.int64)
        self._keys.append(keys)
        self.size = keys.size
        self._reserve(keys.size)
        if self.capacity == 16:
            self._place(np.arange(keys.size, dtype=np.int64))


class Growable:
    """A numpy array whose first axis grows by doubling; `view()` is the rows in use."""

    def __init__(self, row_shape, dtype, capacity=1024):
        self.row_shape, self.dtype = tuple(row_shape), np.dtype(dtype)
        self.array = np.empty((capacity,) + self.row_shape, dtype=self.dtype)
        self.size = 0

    def reserve(self, size):
        if size <= self.array.shape[0]:
            return
        capacity = self.array.shape[0]
        while capacity < size:
            capacity *= 2
        grown = np.empty((capacity,) + self.row_shape, dtype=self.dtype)
        grown[:self.size] = self.array[:self.size]
        self.array = grown

    def append(self, rows):
        rows = np.asarray(rows, dtype=self.dtype)
        self.reserve(self.size + len(rows))
        self.array[self.size:self.size + len(rows)] = rows
        self.size += len(rows)

    def view(self):
        return self.array[:self.size]

    def keep(self, positions):
        """Keeps only the rows at `positions` (in that order)."""
        kept = self.array[positions]
        self.array = np.empty((max(kept.shape[0], 1024),) + self.row_shape, dtype=self.dtype)
        self.array[:kept.shape[0]] = kept
        self.size = kept.shape[0]

    @property
    def nbytes(self):
        return self.size * int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize


# -- deterministic initial rows ---------------------------------------------------------------
INITIALIZERS = ("zeros", "ones", "constant", "random_normal", "truncated_normal",
                "random_uniform")


def _uniforms(seed, keys, dim, counter):
    """Uniforms in (0, 1), shape (len(keys), dim), a function of (seed, key, column, counter)."""
    with np.errstate(over="ignore"):
        base = mix64(keys.view(np.uint64) ^ np.uint64(seed)) + np.uint64(counter) * _GOLDEN
        columns = np.arange(dim, dtype=np.uint64) * _M1
        bits = mix64(base[:, None] ^ columns[None, :])
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / (1 << 53))


def initial_rows(spec, keys, dim, dtype):
    """The initial rows of `keys` under `spec` ({"kind": one of INITIALIZERS, its parameters,
    "seed": int}): a function of (spec, key) only, so any shard, any replay and any restore
    gives a key the same first row."""
    keys = np.ascontiguousarray(keys, dtype=np.int64)
    kind, seed = spec["kind"], int(spec.get("seed", 0)) & 0xFFFFFFFFFFFFFFFF
    shape = (keys.size, dim)
    if kind == "zeros":
        return np.zeros(shape, dtype=dtype)
    if kind == "ones":
        return np.ones(shape, dtype=dtype)
    if kind == "constant":
        return np.full(shape, spec.get("value", 0.0), dtype=dtype)
    if kind == "random_uniform":
        low, high = spec.get("minval", 0.0), spec.get("maxval", 1.0)
        return (low + (high - low) * _uniforms(seed, keys, dim, 0)).astype(dtype)
    if kind in ("random_normal", "truncated_normal"):
        mean, stddev = spec.get("mean", 0.0), spec.get("stddev", 1.0)
        z = _normals(seed, keys, dim, 0)
        if kind == "truncated_normal":
            bad = np.abs(z) > 2.0
            counter = 1
            while bad.any():
                rows = np.flatnonzero(bad.any(axis=1))
                redraw = _normals(seed, keys[rows], dim, counter)
                z[rows] = np.where(bad[rows], redraw, z[rows])
                bad = np.abs(z) > 2.0
                counter += 1
        return (mean + stddev * z).astype(dtype)
    raise InvalidArgumentError(f"unknown embedding initializer {kind!r}; known: "
                               f"{', '.join(INITIALIZERS)}")


def _normals(seed, keys, dim, counter):
    u1 = _uniforms(seed, keys, dim, 2 * counter)
    u2 = _uniforms(seed, keys, dim, 2 * counter + 1)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def name_seed(name, seed=0):
    """A table's initializer seed from its name and a user seed: below 2**53, so it travels
    exactly as a double."""
    return (zlib.crc32(name.encode()) * 1_000_003 + int(seed)) % (1 << 53)


# -- the table --------------------------------------------------------------------------------
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
        if self.filter_freq > 1:  # counts matter only until admission; they saturate
            seen = freq[entries].astype(np.int64) + (1 if counts is None else
                                                     np.asarray(counts, dtype=np.int64))
            freq[entries] = np.minimum(seen, np.iinfo(np.int32).max)
        row_of = self.row_of.view()
        waiting = row_of[entries] < 0
        if waiting.any():
            admit = waiting & (freq[entries] >= self.filter_freq)
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
        from .gradients import IndexedSlices  # the engine's sparse gradient
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
        stale = self.last_step.view() < global_step - self.steps_to_live
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
            self.freq.view()[entries[:entry_keys.size]] = np.minimum(
                np.asarray(entry_freq, dtype=np.int64), np.iinfo(np.int32).max)
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
