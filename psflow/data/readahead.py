"""Producing elements ahead of their use, in a thread: `Dataset.prefetch` and the read-ahead
of every iterator. The thread spends its time reading files (which releases the GIL) and in
numpy over whole batches (which releases it on large arrays), so a training step running
meanwhile in the main thread is not held up by it."""

import queue
import threading

from .dataset_ops import Dataset, register

AUTOTUNE = -1  # tf.data.experimental.AUTOTUNE: psflow keeps DEFAULT_DEPTH elements ready
DEFAULT_DEPTH = 2
_POLL_S = 0.1


class ReadAhead:
    """Runs `open_elements()` (an iterator of elements) in a daemon thread, keeping up to
    `depth` elements ready; `get()` returns the next, raising StopIteration at the end and
    the producer's exception if it failed."""

    def __init__(self, open_elements, depth, name="psflow-readahead"):
        self._queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._done = None
        # The thread holds the queue and the event, not this object, so that dropping the
        # iterator stops it.
        self._thread = threading.Thread(target=_fill, args=(open_elements, self._queue,
                                                            self._stop), name=name, daemon=True)
        self._thread.start()

    def get(self, stopped=None):
        """The next element; with `stopped` (a callable), StopIteration as soon as it
        returns True while no element is ready."""
        if self._done is not None:
            raise self._done
        while True:
            try:
                kind, item = self._queue.get(timeout=None if stopped is None else _POLL_S)
                break
            except queue.Empty:
                if stopped():
                    raise StopIteration from None
        if kind == "element":
            return item
        self._done = StopIteration() if kind == "end" else item
        raise self._done

    def close(self):
        """Stops the thread (it ends at its next element) and drops what it had ready."""
        self._stop.set()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass

    def __del__(self):
        self._stop.set()


def _put(out, stop, item):
    while not stop.is_set():
        try:
            out.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _fill(open_elements, out, stop):
    elements = None
    try:
        elements = open_elements()
        for element in elements:
            if not _put(out, stop, ("element", element)):
                return
        _put(out, stop, ("end", None))
    except BaseException as exc:  # handed to the consumer, raised there
        _put(out, stop, ("error", exc))
    finally:
        close = getattr(elements, "close", None)
        if close is not None:
            close()


def depth_of(buffer_size):
    size = int(buffer_size)
    if size == AUTOTUNE:
        return DEFAULT_DEPTH
    if size < 1:
        raise ValueError(f"prefetch: buffer_size must be at least 1 (or AUTOTUNE), got {size}")
    return size


class PrefetchDataset(Dataset):
    def __init__(self, dataset, buffer_size):
        self.depth = depth_of(buffer_size)
        super().__init__(dataset._structure, dataset._specs, inputs=(dataset,))

    def _elements(self, opening):
        ahead = ReadAhead(lambda: self._inputs[0]._elements(opening), self.depth)
        try:
            while True:
                try:
                    yield ahead.get()
                except StopIteration:
                    return
        finally:
            ahead.close()


register("prefetch", PrefetchDataset)
