"""Iterators over a dataset, and `get_next()`: a graph node whose value, in each
`Session.run`, is the iterator's next element (every tensor of one `get_next()` sees the same
element in a run, since a run computes each node once). At the end it raises
`errors.OutOfRangeError`, which ends a TF1 input loop and a MonitoredTrainingSession."""

import logging
import threading

from ..errors import FailedPreconditionError, OutOfRangeError
from ..graph import Constant, Node
from . import stream_state
from .dataset_ops import Opening, register
from .element_structure import pack
from .followed_files import FollowedFilesDataset, position_of
from .input_process import ProcessReadAhead, fork_available
from .map_function import MapDataset, skip_counters
from .readahead import DEFAULT_DEPTH, PrefetchDataset, ReadAhead
from .text_lines import TextLineDataset

log = logging.getLogger(__name__)


class Iterator:
    """Reads a dataset's elements ahead of the step (as many as its last `prefetch` asks,
    else DEFAULT_DEPTH) and hands them to its `get_next()` nodes. A pipeline that reads files
    or maps runs in a process of its own (input_process), where fork is available; one that
    only slices arrays, in a thread."""

    def __init__(self, dataset, initializable):
        self.dataset = dataset
        self.graph = dataset.graph
        self._initializable = initializable
        if not initializable:
            fed = [c for c in dataset._captures if not isinstance(c, Constant)]
            if fed:
                raise ValueError(f"make_one_shot_iterator: the dataset uses {fed[0].name!r}, "
                                 "which must be fed; use make_initializable_iterator() and feed "
                                 "it when running the initializer")
        self._lock = threading.Lock()
        self._counters = skip_counters(dataset)
        self._followed = _followed(dataset)
        if self._followed is not None:
            stream_state.mark_following()
        self._ahead = None
        self._initializer = None

    @property
    def output_types(self):
        return self.dataset.output_types

    @property
    def output_shapes(self):
        return self.dataset.output_shapes

    @property
    def initializer(self):
        """The op that (re)starts the iterator, reading the values of the placeholders the
        dataset uses from the run's feed_dict."""
        if not self._initializable:
            raise ValueError("a one-shot iterator has no initializer; use "
                             "make_initializable_iterator()")
        if self._initializer is None:
            self._initializer = IteratorInitializer(self)
        return self._initializer

    def make_initializer(self, dataset, name=None):
        if dataset is not self.dataset:
            raise ValueError("psflow's iterators are made from their dataset: use "
                             "dataset.make_initializable_iterator()")
        return self.initializer

    def get_next(self, name=None):
        """The next element: tensors in the dataset's structure (a tensor, tuple or dict)."""
        node = IteratorGetNext(self, name)
        parts = [IteratorComponent(node, k, spec) for k, spec in enumerate(self.dataset._specs)]
        return pack(self.dataset._structure, parts)

    # -- what the nodes call --------------------------------------------------------------------
    def start(self, bindings=None):
        with self._lock:
            if self._ahead is not None:
                self._ahead.close()
            self._open(bindings)

    def _open(self, bindings):
        dataset = self.dataset
        # A last prefetch is the iterator's own read-ahead, not a second thread.
        depth = dataset.depth if isinstance(dataset, PrefetchDataset) else DEFAULT_DEPTH
        source = dataset._inputs[0] if isinstance(dataset, PrefetchDataset) else dataset
        opening = Opening(bindings)
        if fork_available() and _does_work(source):
            self._ahead = ProcessReadAhead(lambda: source._elements(opening), depth,
                                           self._counters)
        else:
            self._ahead = ReadAhead(lambda: source._elements(opening), depth)

    def next_element(self):
        ahead = self._ahead
        if ahead is None:
            if self._initializable:
                raise FailedPreconditionError(
                    "GetNext() failed because the iterator has not been initialized: run "
                    "its initializer first")
            with self._lock:
                if self._ahead is None:
                    self._open(None)
                ahead = self._ahead
        followed = self._followed
        if followed is None:
            try:
                return ahead.get()[0]
            except StopIteration:
                self._report_skips(ahead)
                raise OutOfRangeError("End of sequence") from None
        # A followed directory ends when the process is asked to stop; an element handed
        # over moves the dataset's consumed position.
        try:
            if stream_state.stop_requested():
                raise StopIteration
            values, origin = ahead.get(stream_state.stop_requested)
        except StopIteration:
            self._report_skips(ahead)
            raise OutOfRangeError("End of sequence") from None
        position = position_of(origin)
        if position is not None:
            stream_state.consume(followed.name, followed.index,
                                 stream_state.Position(followed.num_shards, *position))
        return values

    def _report_skips(self, ahead):
        skipped = sum(c.skipped_lines for c in self._counters)
        if skipped and not getattr(ahead, "reported", False):
            ahead.reported = True
            first = [line for c in self._counters for line in c.first_skipped]
            log.warning("the input pipeline skipped %d malformed lines (the first: %s)",
                        skipped, "; ".join(first))


register("iterator", Iterator)


class IteratorGetNext(Node):
    """The iterator's next element, as a tuple of its components."""

    def __init__(self, iterator, name=None):
        self.iterator = iterator
        super().__init__((), name=name or "IteratorGetNext", graph=iterator.graph)

    def forward(self):
        return self.iterator.next_element()


class IteratorComponent(Node):
    """Component `index` of an IteratorGetNext's element (`.op` is the IteratorGetNext)."""

    def __init__(self, get_next, index, spec):
        self.index = index
        super().__init__((get_next,), shape=spec.shape, dtype=spec.dtype,
                         unique_name=f"{get_next.name}:{index}")

    @property
    def op(self):
        return self.inputs[0]

    def forward(self, element):
        return element[self.index]


class IteratorInitializer(Node):
    """Runs to (re)start an initializable iterator with the values of its dataset's
    placeholders, fed in the same run."""

    def __init__(self, iterator):
        self.iterator = iterator
        self.captures = [c for c in iterator.dataset._captures if not isinstance(c, Constant)]
        super().__init__(self.captures, name="MakeIterator", graph=iterator.graph)

    def forward(self, *values):
        self.iterator.start(dict(zip(self.captures, values, strict=True)))
        return None


def make_one_shot_iterator(dataset):
    """`tf.data.make_one_shot_iterator(dataset)` (TF1's spelling in tf.compat.v1.data)."""
    return dataset.make_one_shot_iterator()


def make_initializable_iterator(dataset, shared_name=None):
    """`tf.data.make_initializable_iterator(dataset)`."""
    return dataset.make_initializable_iterator()


def _followed(dataset):
    """The FollowedFilesDataset `dataset`'s pipeline reads, or None."""
    pending = [dataset]
    while pending:
        d = pending.pop()
        if isinstance(d, FollowedFilesDataset):
            return d
        pending.extend(d._inputs)
    return None


def _does_work(dataset):
    """Whether the pipeline reads files or maps (else it only slices arrays in memory)."""
    pending = [dataset]
    while pending:
        d = pending.pop()
        if isinstance(d, (MapDataset, TextLineDataset)):
            return True
        pending.extend(d._inputs)
    return False
