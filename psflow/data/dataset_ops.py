"""`Dataset` and the transformations that only reorder or regroup elements: from_tensor_slices,
batch, shuffle, repeat, shard (map is in map_function, prefetch in readahead, reading text
files in text_lines).

A dataset describes a pipeline; an iterator opens it. Opened, a dataset yields elements as
(flat tuple of numpy arrays, origin). A dataset whose elements are rows of larger arrays may
also yield *chunks* (many elements stacked along a first axis, with their origins), so
`TextLineDataset(files).batch(n)` cuts batches out of blocks of lines without a Python step
per line.
"""

import numpy as np

from ..graph import Constant, Node, get_default_graph
from .element_structure import Spec, as_component, flatten, pack, structure_of
from .line_origins import Origin

CHUNK_ROWS = 4096  # rows per chunk of a dataset sliced from arrays

# The classes of the modules above this one that Dataset's methods make: "map" (MapDataset),
# "prefetch" (PrefetchDataset), "iterator" (Iterator). Each module registers its class when
# imported (the package imports them all), so this module imports none of them.
_MADE_BY = {}


def register(kind, cls):
    _MADE_BY[kind] = cls


class Opening:
    """One opening of a pipeline by an iterator: the values of the tensors its datasets
    capture (placeholders fed to the initializer), and a count of openings per dataset (a
    shuffle draws a new order each time repeat opens it again)."""

    def __init__(self, bindings=None):
        self.bindings = bindings or {}
        self.count = {}

    def value(self, node):
        if isinstance(node, Constant):
            return node.value
        if node not in self.bindings:
            raise ValueError(f"the dataset needs the value of {node.name!r}: use "
                             "make_initializable_iterator() and feed it when running the "
                             "initializer")
        return self.bindings[node]

    def opened(self, dataset):
        number = self.count.get(dataset, 0)
        self.count[dataset] = number + 1
        return number


class Dataset:
    """A sequence of elements, each a tensor or a tuple or dict of them (TF1's tf.data)."""

    def __init__(self, structure, specs, inputs=(), captures=()):
        self._structure = structure
        self._specs = list(specs)
        self._inputs = tuple(inputs)
        self._captures = tuple(captures) + tuple(c for d in inputs for c in d._captures)
        self.graph = get_default_graph()

    # -- what an iterator calls ---------------------------------------------------------------
    def _elements(self, opening):
        """Yields (flat tuple of arrays, origin or None), one per element."""
        for values, origin in self._chunks(opening):
            for row in range(len(values[0])):
                yield (tuple(v[row] for v in values),
                       origin.row(row) if origin is not None else None)

    def _chunked(self):
        """Whether `_chunks` is available: elements come as rows of stacked arrays."""
        return False

    def _chunks(self, opening):
        """Yields (flat tuple of stacked arrays, origin), many elements at a time."""
        raise NotImplementedError(type(self).__name__)

    # -- TF1's attributes ---------------------------------------------------------------------
    @property
    def output_types(self):
        return pack(self._structure, [s.dtype for s in self._specs])

    @property
    def output_shapes(self):
        return pack(self._structure, [s.shape for s in self._specs])

    # -- transformations ------------------------------------------------------------------------
    @staticmethod
    def from_tensor_slices(tensors):
        """A dataset of the slices of `tensors` (an array, or a tuple or dict of them) along
        their first dimension."""
        return TensorSlicesDataset(tensors)

    def map(self, map_func, num_parallel_calls=None):
        """Applies `map_func` to each element; the function is built once into a graph of
        psflow ops (TF1 traces it the same way) and run on each element ahead of the step."""
        return _MADE_BY["map"](self, map_func)

    def batch(self, batch_size, drop_remainder=False):
        """Combines consecutive elements into batches of `batch_size` (the last one smaller,
        unless `drop_remainder`)."""
        return BatchDataset(self, batch_size, drop_remainder)

    def shuffle(self, buffer_size, seed=None, reshuffle_each_iteration=True):
        """Shuffles elements with a buffer of `buffer_size`, as TF does: each element out is
        drawn at random from the buffer, and the next one in takes its place."""
        return ShuffleDataset(self, buffer_size, seed, reshuffle_each_iteration)

    def repeat(self, count=None):
        """Repeats the dataset `count` times (None or -1: forever)."""
        return RepeatDataset(self, count)

    def take(self, count):
        """The first `count` elements (-1: all of them)."""
        return TakeDataset(self, count, skip=False)

    def skip(self, count):
        """All but the first `count` elements (-1: none of them)."""
        return TakeDataset(self, count, skip=True)

    def shard(self, num_shards, index):
        """Every `num_shards`-th element, starting at `index`."""
        return ShardDataset(self, num_shards, index)

    def prefetch(self, buffer_size):
        """Produces elements ahead, in a thread, keeping up to `buffer_size` ready."""
        return _MADE_BY["prefetch"](self, buffer_size)

    def make_one_shot_iterator(self):
        """An iterator that starts when first used and runs through the dataset once."""
        return _MADE_BY["iterator"](self, initializable=False)

    def make_initializable_iterator(self, shared_name=None):
        """An iterator that starts (again) each time its `initializer` runs."""
        return _MADE_BY["iterator"](self, initializable=True)


class TensorSlicesDataset(Dataset):
    def __init__(self, tensors):
        structure = structure_of(tensors)
        self._components = [as_component(c, "from_tensor_slices") for c in flatten(tensors)]
        specs, captures = [], []
        for c in self._components:
            shape = None if c.shape is None else tuple(c.shape)
            if shape is not None and len(shape) == 0:
                raise ValueError("from_tensor_slices: a component is a scalar; it needs a "
                                 "first dimension to slice")
            if isinstance(c, Node):
                if not isinstance(c, Constant):
                    captures.append(c)
            specs.append(Spec(c.dtype, None if shape is None else shape[1:]))
        sizes = {c.shape[0] for c in self._components
                 if c.shape is not None and c.shape[0] is not None}
        if len(sizes) > 1:
            raise ValueError(f"from_tensor_slices: components have different first "
                             f"dimensions {sorted(sizes)}")
        super().__init__(structure, specs, captures=captures)

    def _chunked(self):
        return True

    def _chunks(self, opening):
        values = [opening.value(c) if isinstance(c, Node) else c for c in self._components]
        sizes = {len(v) for v in values}
        if len(sizes) > 1:
            raise ValueError(f"from_tensor_slices: components have different first "
                             f"dimensions {sorted(sizes)}")
        size = sizes.pop()
        return ((tuple(v[i:i + CHUNK_ROWS] for v in values), None)
                for i in range(0, size, CHUNK_ROWS))


class BatchDataset(Dataset):
    def __init__(self, dataset, batch_size, drop_remainder):
        self._size = _positive(batch_size, "batch_size")
        self._drop = bool(drop_remainder)
        super().__init__(dataset._structure,
                         [s.batched(self._size if self._drop else None) for s in
                          dataset._specs], inputs=(dataset,))

    def _elements(self, opening):
        source = self._inputs[0]
        size = self._size
        if not source._chunked():  # element by element
            parts = []
            for element in source._elements(opening):
                parts.append(element)
                if len(parts) == size:
                    yield _stack(parts)
                    parts = []
            if parts and not self._drop:
                yield _stack(parts)
            return
        held, count = [], 0
        for values, origin in source._chunks(opening):
            held.append((values, origin))
            count += len(values[0])
            while count >= size:
                batch, held = _cut(held, size)
                count -= size
                yield batch
        if count and not self._drop:
            yield _cut(held, count)[0]


def _stack(elements):
    values = tuple(np.stack(parts) for parts in zip(*(e[0] for e in elements), strict=True))
    return values, Origin.concatenate([e[1] for e in elements])


def _cut(held, size):
    """(the first `size` rows of the chunks `held`, the chunks that remain)."""
    taken, rest, need = [], [], size
    for values, origin in held:
        rows = len(values[0])
        if need == 0:
            rest.append((values, origin))
        elif rows <= need:
            taken.append((values, origin))
            need -= rows
        else:
            taken.append((tuple(v[:need] for v in values),
                          origin.take(slice(0, need)) if origin is not None else None))
            rest.append((tuple(v[need:] for v in values),
                         origin.take(slice(need, None)) if origin is not None else None))
            need = 0
    if len(taken) == 1:
        return taken[0], rest
    values = tuple(np.concatenate(parts) for parts in zip(*(t[0] for t in taken), strict=True))
    return (values, Origin.concatenate([t[1] for t in taken])), rest


class ShuffleDataset(Dataset):
    def __init__(self, dataset, buffer_size, seed, reshuffle_each_iteration):
        self._buffer = _positive(buffer_size, "buffer_size")
        if seed is None:
            seed = get_default_graph().seed
        self._seed = None if seed is None else int(seed)
        self._reshuffle = bool(reshuffle_each_iteration)
        super().__init__(dataset._structure, dataset._specs, inputs=(dataset,))

    def _elements(self, opening):
        number = opening.opened(self)
        if self._seed is None:
            rng = np.random.default_rng()
        else:
            rng = np.random.default_rng([self._seed, number if self._reshuffle else 0])
        buffer = []
        for element in self._inputs[0]._elements(opening):
            if len(buffer) < self._buffer:
                buffer.append(element)
                continue
            k = int(rng.integers(len(buffer)))
            yield buffer[k]
            buffer[k] = element
        for k in rng.permutation(len(buffer)):
            yield buffer[k]


class RepeatDataset(Dataset):
    def __init__(self, dataset, count):
        count = -1 if count is None else int(count)
        if count < -1:
            raise ValueError(f"repeat: count must be -1, None or >= 0, got {count}")
        self._count = count
        super().__init__(dataset._structure, dataset._specs, inputs=(dataset,))

    def _elements(self, opening):
        yield from self._repeated(opening, lambda: self._inputs[0]._elements(opening))

    def _chunked(self):
        return self._inputs[0]._chunked()

    def _chunks(self, opening):
        return self._repeated(opening, lambda: self._inputs[0]._chunks(opening))

    def _repeated(self, opening, open_source):
        epoch = 0
        while self._count == -1 or epoch < self._count:
            produced = False
            for item in open_source():
                produced = True
                yield item
            epoch += 1
            if not produced:  # repeating an empty dataset forever would never yield
                return


class _RowSelection(Dataset):
    """A dataset keeping some of its input's elements by their positions (`_pick`): whole
    chunks of rows when its input hands over chunks, else element by element."""

    def _pick(self, start, rows):
        """The slice of the `rows` elements from position `start` that are kept, or None once
        no later element will be."""
        raise NotImplementedError

    def _elements(self, opening):
        if self._chunked():
            yield from Dataset._elements(self, opening)
            return
        for k, element in enumerate(self._inputs[0]._elements(opening)):
            pick = self._pick(k, 1)
            if pick is None:
                return
            if len(range(1)[pick]):
                yield element

    def _chunked(self):
        return self._inputs[0]._chunked()

    def _chunks(self, opening):
        seen = 0
        for values, origin in self._inputs[0]._chunks(opening):
            rows = len(values[0])
            pick = self._pick(seen, rows)
            seen += rows
            if pick is None:
                return
            if len(range(rows)[pick]):
                yield (tuple(v[pick] for v in values),
                       origin.take(pick) if origin is not None else None)


class ShardDataset(_RowSelection):
    def __init__(self, dataset, num_shards, index):
        num_shards, index = int(num_shards), int(index)
        if num_shards < 1 or not 0 <= index < num_shards:
            raise ValueError(f"shard: index {index} is out of range for {num_shards} shards")
        self._shards, self._index = num_shards, index
        super().__init__(dataset._structure, dataset._specs, inputs=(dataset,))

    def _pick(self, start, rows):
        return slice((self._index - start) % self._shards, rows, self._shards)


class TakeDataset(_RowSelection):
    """take(count) or, with `skip`, skip(count): cuts the elements at `count`."""

    def __init__(self, dataset, count, skip):
        count = int(count)
        if count < -1:
            raise ValueError(f"{'skip' if skip else 'take'}: count must be -1 or >= 0, got "
                             f"{count}")
        self._count, self._skip = count, skip
        super().__init__(dataset._structure, dataset._specs, inputs=(dataset,))

    def _pick(self, start, rows):
        if not self._skip and self._count != -1 and start >= self._count:
            return None  # taken all
        end = start + rows
        cut = end if self._count == -1 else min(max(self._count, start), end)
        return slice(cut - start, rows) if self._skip else slice(0, cut - start)


def _positive(value, what):
    value = int(value)
    if value < 1:
        raise ValueError(f"{what} must be at least 1, got {value}")
    return value
