"""`FollowedFilesDataset` (`tf.data.experimental.follow_files`): the lines of the files that
appear in a directory, read as they appear, for training on an unbounded stream.

Files are expected as log shippers write them: under a temporary name (a leading "." or "_",
or a ".tmp" suffix), renamed in once complete, never changed afterwards, with names that sort
in the order they arrive (a timestamp or sequence number first). Each file is read once, in
name order, line by line as TextLineDataset reads it; when no new file is there the dataset
waits, polling the directory, and it ends only when its process is asked to stop (or after
`idle_timeout` seconds without a new file, or `max_files` files).

Each worker reads its own share of the files: file F goes to shard hash(F) % num_shards (the
first 8 bytes of F's BLAKE2b digest, little-endian), so the shares are disjoint and the same
on every run. How far the steps have consumed each share
(a file name and a line count) is kept by stream_state; a restarted job resumes after it.
"""

import fnmatch
import hashlib
import logging
import os
import time

import numpy as np

from ..errors import FailedPreconditionError, NotFoundError
from ..train.cluster import task_config_from_env
from . import stream_state
from .dataset_ops import Dataset
from .element_structure import LEAF, Spec
from .text_lines import _COMPRESSIONS, TextLineDataset

log = logging.getLogger(__name__)

TEMPORARY_PREFIXES = (".", "_")
TEMPORARY_SUFFIXES = (".tmp", ".partial", "._COPYING_")
DEFAULT_POLL_INTERVAL_S = 0.5


def is_temporary(name):
    """Whether `name` is a file still being written (or no data file at all) by convention."""
    return name.startswith(TEMPORARY_PREFIXES) or name.endswith(TEMPORARY_SUFFIXES)


def _utf8(name):
    """Whether `name` is valid UTF-8 (a position names its file in checkpoints and on the
    wire, which take text)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shard_of_file(name, num_shards):
    """The shard that reads the file named `name` (its name in the directory). A digest, not a
    CRC: a CRC's low bits are linear in the name's bits, so names that differ in a digit
    could all land on one shard."""
    digest = hashlib.blake2b(os.fsencode(name), digest_size=8).digest()
    return int.from_bytes(digest, "little") % num_shards


class FollowedFilesDataset(TextLineDataset):
    """The lines of the files appearing in `directory` whose names match `pattern` (fnmatch),
    each an `S` string without its line ending, file after file in name order, waiting for
    new files forever. Files with temporary names (leading "." or "_", suffix ".tmp",
    ".partial" or "._COPYING_") are left alone until renamed, as are names that are not
    UTF-8; a file whose name sorts before one already read arrived too late for the order and
    is skipped, with a warning.

    `num_shards` and `index`: this reader takes the files with hash(name) % num_shards ==
    index, see shard_of_file (default: the worker's index and the number of workers from
    TF_CONFIG, or every file without a cluster). `poll_interval`: seconds between looks at
    the directory. `idle_timeout`: end after this many seconds without a new file (default:
    never). `max_files`: end after reading this many files (default: no bound). `name`: the
    key of the dataset's position in checkpoints (default: the directory's absolute path).
    `compression_type`: None or "" (plain text), "GZIP" or "ZLIB", as TextLineDataset."""

    def __init__(self, directory, pattern="*", poll_interval=DEFAULT_POLL_INTERVAL_S,
                 idle_timeout=None, max_files=None, num_shards=None, index=None, name=None,
                 compression_type=None):
        if not isinstance(directory, (str, bytes, os.PathLike)):
            raise TypeError(f"FollowedFilesDataset: directory must be a path, got {directory!r}")
        directory = os.path.abspath(os.fsdecode(directory))
        if not os.path.isdir(directory):
            raise NotFoundError(f"FollowedFilesDataset: {directory} is not a directory")
        if not isinstance(pattern, str) or not pattern or "/" in pattern:
            raise ValueError(f"FollowedFilesDataset: pattern must be a file name pattern "
                             f"(no '/'), got {pattern!r}")
        if compression_type not in _COMPRESSIONS:
            raise ValueError(f"FollowedFilesDataset: compression_type must be None, '', 'GZIP' "
                             f"or 'ZLIB', got {compression_type!r}")
        self.poll_interval = _seconds(poll_interval, "poll_interval")
        self.idle_timeout = None if idle_timeout is None else \
            _seconds(idle_timeout, "idle_timeout")
        if max_files is not None and (not isinstance(max_files, int) or max_files < 1):
            raise ValueError(f"FollowedFilesDataset: max_files must be a whole number >= 1, "
                             f"got {max_files!r}")
        self.max_files = max_files
        if (num_shards is None) != (index is None):
            raise ValueError("FollowedFilesDataset: give both num_shards and index, or neither")
        if num_shards is None:
            task = task_config_from_env()
            worker = task is not None and task.task_type in ("worker", "chief", "master")
            num_shards, index = (task.num_workers, task.worker_index) if worker else (1, 0)
        num_shards, index = int(num_shards), int(index)
        if num_shards < 1 or not 0 <= index < num_shards:
            raise ValueError(f"FollowedFilesDataset: index {index} is out of range for "
                             f"{num_shards} shards")
        self.directory, self.pattern = directory, pattern
        self.num_shards, self.index = num_shards, index
        self.name = directory if name is None else str(name)
        self._compression = compression_type or None
        Dataset.__init__(self, LEAF, [Spec("S", ())])

    # -- which files -------------------------------------------------------------------------
    def _mine(self, name):
        return not is_temporary(name) and fnmatch.fnmatchcase(name, self.pattern) and \
            _utf8(name) and shard_of_file(name, self.num_shards) == self.index

    def _listing(self):
        """The names of this share's complete files in the directory, sorted."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            raise NotFoundError(f"FollowedFilesDataset: {self.directory} is gone") from None
        return sorted(n for n in names if self._mine(n) and
                      os.path.isfile(os.path.join(self.directory, n)))

    def _start(self):
        """(the last file read or None, the lines of it consumed) to start after."""
        counts = stream_state.resumed_shard_counts(self.name)
        if counts and counts != {self.num_shards}:
            raise FailedPreconditionError(
                f"FollowedFilesDataset {self.name}: the job resumes from positions taken with "
                f"the files divided among {sorted(counts)} shards, and this reader divides them "
                f"among {self.num_shards}; run with the same number of workers (or num_shards) "
                "as the checkpoint was written with")
        start = stream_state.start_of(self.name, self.index)
        return (start.file, start.lines) if start is not None else (None, 0)

    # -- reading -------------------------------------------------------------------------------
    def _chunks(self, opening):
        last, skip = self._start()
        listed = None  # the names of the last listing: a late file is one not among them
        files_read = 0
        idle_since = time.monotonic()
        while not stream_state.stop_requested():
            names = self._listing()
            fresh = [n for n in names if last is None or n > last or (n == last and skip)]
            for name in names:
                if last is not None and name < last and listed is not None and \
                        name not in listed:
                    log.warning("FollowedFilesDataset %s: %s arrived after %s was read and is "
                                "skipped (file names must sort in the order files arrive)",
                                self.directory, name, last)
            listed = set(names)
            for name in fresh:
                lines_before = skip if name == last else 0
                yield from self._file(name, lines_before)
                last, skip = name, 0
                files_read += 1
                if self.max_files is not None and files_read >= self.max_files:
                    return
                if stream_state.stop_requested():
                    return
            if fresh:
                idle_since = time.monotonic()
                continue
            if self.idle_timeout is not None and \
                    time.monotonic() - idle_since >= self.idle_timeout:
                return
            time.sleep(self.poll_interval)

    def _file(self, name, lines_before):
        """The chunks of file `name`, without its first `lines_before` lines."""
        path = os.path.join(self.directory, name)
        for values, origin in self._read(path, 0, (path,)):
            if lines_before:
                keep = origin.lines > lines_before
                if not keep.any():
                    continue
                if not keep.all():
                    values, origin = (values[0][keep],), origin.take(keep)
            yield values, origin


def position_of(origin):
    """(file name, lines) of the furthest row of an element of a followed dataset: the file
    sorting last among its rows' files and the largest line number of that file's rows; None
    for an element without an origin."""
    if origin is None or not len(origin):
        return None
    ids = np.unique(origin.file_ids)
    names = {int(i): os.path.basename(origin.files[int(i)]) for i in ids}
    furthest = max(names, key=names.get)
    lines = int(origin.lines[origin.file_ids == furthest].max())
    return names[furthest], lines


def follow_files(directory, pattern="*", **kwargs):
    """`tf.data.experimental.follow_files(directory, pattern="*", ...)`: a
    FollowedFilesDataset (see it for the arguments)."""
    return FollowedFilesDataset(directory, pattern, **kwargs)


def _seconds(value, what):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"FollowedFilesDataset: {what} must be a number of seconds, got "
                         f"{value!r}") from None
    if not 0 < value < float("inf"):
        raise ValueError(f"FollowedFilesDataset: {what} must be more than 0 seconds, got "
                         f"{value!r}")
    return value
