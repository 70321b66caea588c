"""Where each line of a dataset came from (file and line number), carried beside the lines
through batching and shuffling, so an op that rejects a line can name it.

A map function runs with the origin of the element it is given as the current origin of its
thread (`current()`); an op that sees that origin's rows in its input names them.
"""

import contextlib
import threading

import numpy as np

from ..errors import InvalidArgumentError


class Origin:
    """The files and 1-based line numbers of the rows of an element: row i came from line
    `lines[i]` of `files[file_ids[i]]`."""

    __slots__ = ("files", "file_ids", "lines")

    def __init__(self, files, file_ids, lines):
        self.files = files
        self.file_ids = np.asarray(file_ids, dtype=np.int32).reshape(-1)
        self.lines = np.asarray(lines, dtype=np.int64).reshape(-1)

    def __len__(self):
        return self.lines.size

    def describe(self, row):
        """`file:line` of row `row`."""
        return f"{self.files[self.file_ids[row]]}:{self.lines[row]}"

    def take(self, rows):
        return Origin(self.files, self.file_ids[rows], self.lines[rows])

    def row(self, index):
        return Origin(self.files, self.file_ids[index:index + 1], self.lines[index:index + 1])

    @staticmethod
    def concatenate(origins):
        """One origin for elements stacked in order; None unless every part has one. Parts
        with different file lists (a followed directory's files, one list per file) get one
        list of them all."""
        if not origins or any(o is None for o in origins):
            return None
        files = origins[0].files
        lines = np.concatenate([o.lines for o in origins])
        if all(o.files is files for o in origins):
            return Origin(files, np.concatenate([o.file_ids for o in origins]), lines)
        merged, where = [], {}
        for o in origins:
            for name in o.files:
                if name not in where:
                    where[name] = len(merged)
                    merged.append(name)
        file_ids = np.concatenate([
            np.asarray([where[name] for name in o.files], dtype=np.int32)[o.file_ids]
            for o in origins])
        return Origin(tuple(merged), file_ids, lines)


class SkippedRecord(InvalidArgumentError):
    """A malformed record was skipped: a map function whose element it was drops it."""


class _Current(threading.local):
    def __init__(self):
        self.origin = None


_current = _Current()


def current():
    """The origin of the element the running map function was given, or None."""
    return _current.origin


@contextlib.contextmanager
def origin_of_element(origin):
    """Context manager: `origin` is the current origin of this thread inside it."""
    saved, _current.origin = _current.origin, origin
    try:
        yield
    finally:
        _current.origin = saved
