"""Int64 keys: their hash, the shard that owns each, their distinct values in a batch (Dedup),
and the index that maps them to entry numbers (KeyIndex) over growable numpy arrays.

`KeyIndex` maps int64 keys (any value, negative included) to entry numbers with open
addressing and linear probing over numpy arrays: a batch of keys is found or inserted with
array operations, a few passes over the keys still probing, never a Python loop per key, and
an entry costs about 30 bytes (a dict costs over 100). Arrays grow by doubling into pages of
their own (`mapped_zeros`), so memory not yet used is never touched and costs no resident
memory, and an outgrown array's pages go back to the system when it is dropped.
"""

import mmap

import numpy as np

MIX_M1 = np.uint64(0xBF58476D1CE4E5B9)
MIX_M2 = np.uint64(0x94D049BB133111EB)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MAX_LOAD = 0.5
MAP_BYTES = 1 << 20


def mapped_zeros(shape, dtype):
    """A zeroed array; from MAP_BYTES up, on pages of its own (an anonymous mmap): only the
    pages written become resident, and dropping the array unmaps them at once. Grown from the
    C heap instead, the outgrown halves of a table's arrays stayed in the process (a table of
    2M rows held 1.75x its ideal bytes per row; on pages of its own, 1.47x, in a process
    that does not hand free heap memory back as a parameter server does)."""
    dtype = np.dtype(dtype)
    shape = tuple(shape) if isinstance(shape, tuple) else (int(shape),)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes < MAP_BYTES:
        return np.zeros(shape, dtype)
    pages = mmap.mmap(-1, nbytes)
    if hasattr(mmap, "MADV_HUGEPAGE"):  # as numpy advises for its own large arrays
        pages.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(pages, dtype=dtype).reshape(shape)


def mix64(x):
    """splitmix64's finalizer over uint64 arrays: a bijection that scatters nearby keys."""
    with np.errstate(over="ignore"):
        x = np.asarray(x, dtype=np.uint64)
        x = (x ^ (x >> np.uint64(30))) * MIX_M1
        x = (x ^ (x >> np.uint64(27))) * MIX_M2
        return x ^ (x >> np.uint64(31))


def shard_of_keys(keys, num_shards):
    """The parameter-server shard of each key: a hash of the key over all shards (the same
    for every worker and every shard count's restore)."""
    if num_shards == 1:
        return np.zeros(np.shape(keys), dtype=np.intp)
    hashed = mix64(np.asarray(keys, dtype=np.int64).view(np.uint64) ^ GOLDEN)
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
        self._slot_entries = mapped_zeros(capacity, np.int32)  # entry + 1; 0 is empty
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
        self._slot_entries = None  # the outgrown slots go before the new ones are made
        self._slot_entries = mapped_zeros(capacity, np.int32)
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
        self.array = mapped_zeros((capacity,) + self.row_shape, self.dtype)
        self.size = 0

    def reserve(self, size):
        if size <= self.array.shape[0]:
            return
        capacity = self.array.shape[0]
        while capacity < size:
            capacity *= 2
        grown = mapped_zeros((capacity,) + self.row_shape, self.dtype)
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
        self.array = mapped_zeros((max(kept.shape[0], 1024),) + self.row_shape, self.dtype)
        self.array[:kept.shape[0]] = kept
        self.size = kept.shape[0]

    @property
    def nbytes(self):
        return self.size * int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize

