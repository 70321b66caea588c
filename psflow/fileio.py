"""Files written so that a crash never leaves half of one: everything goes to a temporary
name beside its destination, is synced, and is renamed into place."""

import hashlib
import io
import os
import tempfile


def atomic_write(path, write):
    """Calls write(file) on a temporary file beside `path` (or writes `write` itself, when it
    is bytes), syncs it and renames it to `path`; returns the SHA-256 of what was written."""
    if isinstance(write, (bytes, bytearray)):
        data = bytes(write)
        write = lambda out: out.write(data)  # noqa: E731
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as raw:
            hashing = _HashingWriter(raw)
            write(hashing)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory)
    return hashing.hexdigest()


def fsync_dir(directory):
    """Makes a rename in `directory` durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _HashingWriter(io.RawIOBase):
    """A write-only stream that hashes what passes through to `raw`."""

    def __init__(self, raw):
        self._raw = raw
        self._hash = hashlib.sha256()

    def writable(self):
        return True

    def write(self, data):
        self._hash.update(data)
        return self._raw.write(data)

    def hexdigest(self):
        return self._hash.hexdigest()


def default_checkpoint_roots():
    """Where a parameter server may write checkpoints unless told otherwise, wherever it
    starts (under `launch`, by hand, in tf.train.Server.join): the current directory and the
    system's temporary folder, joined by os.pathsep."""
    return os.pathsep.join([os.getcwd(), tempfile.gettempdir()])
