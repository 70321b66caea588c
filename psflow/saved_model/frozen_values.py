"""The values a servable freezes: each Variable's value and each embedding table's keys and
rows, read through the session's variable store (psflow.variable_store) so that a local
session and the chief of a cluster job export alike. Global variables are read the way a
checkpoint gathers them, every shard writing its part (tables included) into a scratch
checkpoint that is read back with psflow.checkpoint and removed; or straight from a
checkpoint that was just written."""

import os
import shutil
import tempfile

import numpy as np

from .. import checkpoint
from ..errors import FailedPreconditionError, NotFoundError


def from_session(session, variables, near=None):
    """({Variable name: array}, {table name: (keys, rows)}) of `variables` as `session`'s
    store holds them now. The scratch checkpoint goes beside `near` (a folder the parameter
    servers may write in), else in the system's temporary folder."""
    local = [v for v in variables if v.local]
    shared = [v for v in variables if not v.local]
    values = {v.name: np.array(session.store_for(v).read(v)) for v in local}
    tables = {}
    if shared:
        scratch = tempfile.mkdtemp(prefix=".tmp-export-", dir=_scratch_parent(session, near))
        try:
            step = session.graph.global_step
            path = session.store.save(scratch, shared, step if step is not None else 0, 1)
            more, tables = from_checkpoint(path, shared)
            values.update(more)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return values, tables


def _scratch_parent(session, near):
    """The first of `near` and the temporary folder where every shard may write."""
    candidates = [d for d in (near, tempfile.gettempdir()) if d]
    check = getattr(session.store, "check_checkpoint_dir", None)  # a cluster's store has one
    for directory in candidates:
        os.makedirs(directory, exist_ok=True)
        if check is None:
            return directory
        try:
            check(directory)
            return directory
        except FailedPreconditionError:
            continue
    raise FailedPreconditionError(
        f"cannot export: the parameter servers may write in none of {', '.join(candidates)} "
        "(export beside the job's checkpoint_dir, or start them with --checkpoint-root)")


def from_checkpoint(path, variables):
    """({Variable name: array}, {table name: (keys, rows)}) of `variables` in the checkpoint
    directory `path`; NotFoundError names a variable it lacks."""
    _, saved, _ = checkpoint.read_checkpoint(path)
    saved_tables = checkpoint.read_tables(path)
    values, tables = {}, {}
    for var in variables:
        if var.is_table:
            fields = saved_tables.get(var.name)
            if fields is None:
                raise NotFoundError(f"cannot export embedding table {var.name!r}: it has no "
                                    f"rows in checkpoint {path} (was it initialized?)")
            tables[var.name] = (fields["keys"], fields["values"])
        elif var.name in saved:
            values[var.name] = saved[var.name]
        else:
            raise NotFoundError(f"cannot export variable {var.name!r}: it has no value in "
                                f"checkpoint {path} (was it initialized?)")
    return values, tables
