"""What this process knows of its followed datasets (see followed_files): where each share of
a followed directory was when the job resumed, how far the training steps have consumed it
since, and whether the process was asked to stop.

A position is kept per (dataset name, shard): the last file whose lines were handed to a
step, by name, and how many of its lines. The worker runtime sends the consumed positions to
parameter server 0 with its pushes (so a checkpoint holds the position of the gradients it
holds) and, when a session starts, hands this module the positions the job resumes from.
Nothing here imports beyond the standard library, so the stores may use it freely.
"""

import threading

_lock = threading.Lock()
_resumed = {}   # (dataset, shard) -> Position the job resumed from
_consumed = {}  # (dataset, shard) -> Position of the elements handed to steps
_version = 0    # counts the changes of _consumed
_stop = threading.Event()
_following = threading.Event()  # an iterator of this process reads a followed dataset


class Position(tuple):
    """(num_shards, file, lines): `lines` lines of file `file` (a name in the followed
    directory) and every file of the share named before it were consumed; the directory's
    files were divided among `num_shards` shards."""

    __slots__ = ()

    def __new__(cls, num_shards, file, lines):
        return super().__new__(cls, (int(num_shards), str(file), int(lines)))

    @property
    def num_shards(self):
        return self[0]

    @property
    def file(self):
        return self[1]

    @property
    def lines(self):
        return self[2]


def resume_from(positions):
    """The positions the job resumes from: [(dataset, shard, num_shards, file, lines)]. They
    replace those known before; nothing consumed in this process is forgotten."""
    global _resumed
    resumed = {}
    for dataset, shard, num_shards, file, lines in positions:
        resumed[(str(dataset), int(shard))] = Position(num_shards, file, lines)
    with _lock:
        _resumed = resumed


def start_of(dataset, shard):
    """The Position reading (dataset, shard) starts after: what this process consumed of it,
    else what the job resumed from; None to start at the beginning."""
    key = (dataset, int(shard))
    with _lock:
        return _consumed.get(key) or _resumed.get(key)


def resumed_shard_counts(dataset):
    """The shard counts of the positions `dataset` resumes from (a set)."""
    with _lock:
        return {p.num_shards for (name, _), p in _resumed.items() if name == dataset}


def consume(dataset, shard, position):
    """Elements up to `position` of (dataset, shard) were handed to a step; positions only
    move forward."""
    global _version
    key = (dataset, int(shard))
    with _lock:
        current = _consumed.get(key)
        if current is None or (position.file, position.lines) > (current.file, current.lines):
            _consumed[key] = position
            _version += 1


def consumed(since=None):
    """(version, [(dataset, shard, num_shards, file, lines)]) of the consumed positions; when
    `since` is the current version, the list is None (nothing changed)."""
    with _lock:
        if since == _version:
            return _version, None
        return _version, [(dataset, shard, *p) for (dataset, shard), p in
                          sorted(_consumed.items())]


def mark_following():
    """An iterator of this process reads a followed dataset."""
    _following.set()


def following():
    return _following.is_set()


def request_stop():
    """Asks the followed datasets of this process to end (and training loops to stop)."""
    _stop.set()


def stop_requested():
    return _stop.is_set()


def reset():
    """Forgets every position and stop request (a fresh start, for tests)."""
    global _resumed, _version
    with _lock:
        _resumed = {}
        _consumed.clear()
        _version += 1
    _stop.clear()
    _following.clear()
