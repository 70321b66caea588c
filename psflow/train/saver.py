"""When the chief saves checkpoints, and reading the latest one back when a job starts with
a `checkpoint_dir` that holds one (see psflow.checkpoint for the files). Each variable store
writes its own checkpoints (`store.save`): a local one as one shard file, a distributed one as
one file per parameter server, written by the servers themselves."""

import logging
import time

from psflow import checkpoint as files
from psflow.errors import DataLossError

log = logging.getLogger(__name__)


def latest_state(checkpoint_dir, variables):
    """(global step, {Variable: value}, {(Variable, rule, slot): value}, {table: {field:
    array}}) of the latest checkpoint in `checkpoint_dir`, or None when it has none. Every
    variable and embedding table of the graph must be in it."""
    if not checkpoint_dir:
        return None
    checkpoint = files.latest(checkpoint_dir)
    if checkpoint is None:
        return None
    step, values, slots = files.read_checkpoint(checkpoint)
    tables = files.read_tables(checkpoint)
    by_name = {v.name: v for v in variables if not getattr(v, "is_table", False)}
    table_vars = {v.name: v for v in variables if getattr(v, "is_table", False)}
    missing = sorted((set(by_name) - set(values)) | (set(table_vars) - set(tables)))
    if missing:
        raise DataLossError(f"checkpoint {checkpoint} has no value for {', '.join(missing)}; "
                            "was it written by another model?")
    for name, value in values.items():
        var = by_name.get(name)
        if var is not None and tuple(value.shape) != tuple(var.shape):
            raise DataLossError(f"checkpoint {checkpoint}: {name!r} has shape "
                                f"{tuple(value.shape)}, the graph's variable {tuple(var.shape)}")
    for name, var in table_vars.items():
        dim = tables[name]["values"].shape[1]
        if dim != var.embedding_dim:
            raise DataLossError(f"checkpoint {checkpoint}: embedding table {name!r} has rows of "
                                f"dimension {dim}, the graph's table {var.embedding_dim}")
    log.info("restoring %s (global step %d)", checkpoint, step)
    return (step, {by_name[n]: v for n, v in values.items() if n in by_name},
            {(by_name[n], rule, slot): v for (n, rule, slot), v in slots.items() if n in by_name},
            {table_vars[n]: fields for n, fields in tables.items() if n in table_vars})


class CheckpointSaver:
    """Saves every `save_secs` seconds or `save_steps` global steps (whichever is given) and
    on `end()`. `save()` writes one checkpoint and returns its directory."""

    def __init__(self, save, save_secs=None, save_steps=None):
        self._save = save
        self.save_secs = save_secs
        self.save_steps = save_steps
        self._last_time = time.monotonic()
        self._last_step = None
        self.last_saved = None

    def after_step(self, global_step):
        if self._last_step is None:
            self._last_step = global_step
        due = (self.save_steps and global_step - self._last_step >= self.save_steps) or \
              (self.save_secs and time.monotonic() - self._last_time >= self.save_secs)
        if due:
            self.save(global_step)

    def save(self, global_step=None):
        self.last_saved = self._save()
        self._last_time = time.monotonic()
        if global_step is not None:
            self._last_step = global_step
        return self.last_saved
