"""Reading ahead in a process of its own: the pipeline (reading files, map functions, decode_csv,
batching) runs in a child forked from the training process, so none of it holds the training
process's GIL; finished elements come back through a queue as numpy arrays (pickled without a
copy per value: a batch of 2048 Criteo rows is about half a megabyte).

The child is forked, so it has the pipeline as it was built (map functions' graphs, the values
fed to an initializer) without serializing it. It runs only the pipeline, and exits when it has
sent the end, when the iterator stops it, or when the training process is gone.
"""

import multiprocessing
import os
import pickle
import queue
import signal

_POLL_S = 0.5


_PIPE_BYTES = 4 << 20
_F_SETPIPE_SZ = 1031  # Linux's fcntl command


def _widen(channel):
    """Makes the queue's pipe hold a whole batch (Linux: up to pipe-max-size), so the child
    writes an element at once and taking it is one read, not a relay of 64 KiB pieces."""
    try:
        import fcntl
        with open("/proc/sys/fs/pipe-max-size") as f:
            size = min(_PIPE_BYTES, int(f.read()))
        fcntl.fcntl(channel._writer.fileno(), _F_SETPIPE_SZ, size)
    except (OSError, ValueError, AttributeError, ImportError):
        pass  # the default pipe: slower hand-over, same elements


def fork_available():
    return "fork" in multiprocessing.get_all_start_methods()


class ProcessReadAhead:
    """`open_elements()` run in a forked child, up to `depth` elements ready in a queue; the
    same interface as readahead.ReadAhead. `counters` (decode_csv ops) get the child's counts
    of skipped lines with each element."""

    def __init__(self, open_elements, depth, counters=()):
        context = multiprocessing.get_context("fork")
        self._queue = context.Queue(depth)
        _widen(self._queue)
        self._counters = list(counters)
        self._done = None
        self._process = context.Process(target=_produce, name="psflow-input",
                                        args=(open_elements, self._queue, self._counters,
                                              os.getpid()), daemon=True)
        self._process.start()

    def get(self, stopped=None):
        """The next element; with `stopped` (a callable), StopIteration as soon as it
        returns True while no element is ready."""
        if self._done is not None:
            raise self._done
        while True:
            try:
                kind, item, counts = self._queue.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if stopped is not None and stopped():
                    raise StopIteration from None
                if not self._process.is_alive():
                    self._done = RuntimeError(
                        f"the input pipeline's process exited with code "
                        f"{self._process.exitcode} before the end of its data")
                    raise self._done from None
        for counter, (skipped, first) in zip(self._counters, counts, strict=True):
            counter.skipped_lines, counter.first_skipped = skipped, first
        if kind == "element":
            return item
        self._done = StopIteration() if kind == "end" else item
        raise self._done

    def close(self):
        """Stops the child (the process this object started) and drops what it had ready."""
        if self._process.is_alive():
            self._process.terminate()
        self._process.join(timeout=5)
        self._queue.close()
        self._queue.cancel_join_thread()

    def __del__(self):
        process = getattr(self, "_process", None)
        if process is not None and process.is_alive():
            process.terminate()


def _produce(open_elements, out, counters, parent):
    # The training process may have its own SIGTERM handler (online training's stop); the
    # child ends on SIGTERM, as the iterator's close() and the interpreter's exit expect.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def counts():
        return [(c.skipped_lines, list(c.first_skipped)) for c in counters]

    def put(message):
        while True:
            try:
                out.put(message, timeout=_POLL_S)
                return
            except queue.Full:
                if os.getppid() != parent:  # the training process is gone
                    os._exit(0)

    try:
        for element in open_elements():
            put(("element", element, counts()))
        put(("end", None, counts()))
    except BaseException as exc:  # handed to the training process, raised there
        try:
            pickle.dumps(exc)
        except Exception:  # an exception that does not pickle: its message does
            exc = RuntimeError(f"{type(exc).__name__}: {exc}")
        put(("error", exc, counts()))
    out.close()
    out.join_thread()
