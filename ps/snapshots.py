"""Checkpoint snapshots of one shard: its variables' values and slots and its tables' rows,
copied while training goes on and written as one shard file (psflow.checkpoint) below the
shard's checkpoint root, never elsewhere."""

import errno
import logging
import os
import time

from psflow import checkpoint
from psflow.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from psflow.table_changes import ChangesLost

log = logging.getLogger(__name__)


class ShardSnapshots:
    """Writes a shard's checkpoint files. `checkpoint_root`: the folder they may be written
    in (below it, anywhere), or several separated by os.pathsep; without one the shard writes
    no checkpoint."""

    def __init__(self, shard, checkpoint_root, counters):
        self.shard = shard
        self.counters = counters
        roots = [os.path.realpath(r) for r in str(checkpoint_root or "").split(os.pathsep) if r]
        self.roots = roots
        self.root = os.pathsep.join(roots) or None

    def save(self, path, variables, tables, global_step):
        """Writes the snapshot of `variables` (a DenseVariables) and `tables` (a ShardTables)
        and `global_step()` (None on shards that do not hold it) to the shard file `path`,
        which must lie below the checkpoint root; returns (sha256, global step or None,
        bytes, variable names)."""
        return self.save_incremental(path, variables, tables, global_step)[:4]

    def save_incremental(self, path, variables, tables, global_step, since_seq=0,
                         since_incarnation=0, evict=True):
        """As `save`, writing only the tables' rows changed or removed after sequence
        `since_seq` (a delta) when it belongs to the tables' incarnation `since_incarnation`
        and they still know their changes since then; every row otherwise. Returns (sha256,
        global step or None, bytes, variable names, (delta, table sequence, incarnation)):
        whether a delta was written, and the sequence the file's tables are complete up to
        (the base of the next delta)."""
        real = self._checked(path)
        started = time.perf_counter()
        contents = checkpoint.ShardContents()
        variables.add_to(contents)
        step = global_step()
        seq = tables.clock.value  # every change after it is in the next delta
        delta = 0 < int(since_seq) <= seq and int(since_incarnation) == tables.incarnation
        if delta:
            try:
                pause = tables.add_changes_to(contents, int(since_seq), evict)
            except ChangesLost as exc:
                log.info("shard %d: a full checkpoint instead of a delta: %s", self.shard, exc)
                contents.tables.clear()
                delta = False
        if not delta:
            pause = tables.add_to(contents, evict)
        if contents.tables:
            log.info("shard %d: tables %s copied for the %s checkpoint; each held for at "
                     "most %.3f s", self.shard, ", ".join(sorted(contents.tables)),
                     "incremental" if delta else "full", pause)
        try:
            digest = contents.write(real, step)
        except OSError as exc:
            raise _file_error(exc, real) from exc
        size = os.path.getsize(real)
        self.counters.count_checkpoint(time.perf_counter() - started, size)
        return digest, step, size, sorted(contents.values), (delta, seq, tables.incarnation)

    def _checked(self, path):
        """The real path of `path`, a shard file below the checkpoint root."""
        if self.root is None:
            raise PermissionDeniedError(
                f"parameter server {self.shard} has no checkpoint root, so it writes no "
                "checkpoint (start it with --checkpoint-root DIR, or PSFLOW_CHECKPOINT_DIR)")
        if not path.endswith(".npz") or "\0" in path:
            raise InvalidArgumentError(f"checkpoint file {path!r} must be a path ending in .npz")
        real = os.path.realpath(path)
        if not any(os.path.commonpath([real, root]) == root for root in self.roots):
            raise PermissionDeniedError(f"checkpoint file {path!r} is outside this parameter "
                                        f"server's checkpoint root {self.root}")
        if not os.path.isdir(os.path.dirname(real)):
            raise InvalidArgumentError(f"checkpoint file {path!r}: no such directory")
        return real


def _file_error(exc, path):
    """The psflow error for an OSError writing `path`: out of space is RESOURCE_EXHAUSTED,
    not allowed is PERMISSION_DENIED, the rest FAILED_PRECONDITION; each names the path and
    the system's reason."""
    text = f"cannot write checkpoint file {path}: {exc.strerror or exc}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return ResourceExhaustedError(text)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDeniedError(text)
    return FailedPreconditionError(text)
