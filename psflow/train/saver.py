"""When the chief saves checkpoints, and reading the latest one back when a job starts with
a `checkpoint_dir` that holds one (see psflow.checkpoint for the files). Each variable store
writes its own checkpoints (`store.save`): a local one as one shard file, a distributed one as
one file per parameter server, written by the servers themselves."""

import logging
import os
import time

from .. import checkpoint as files
from ..errors import DataLossError, NotFoundError
from ..graph import get_default_graph
from .optimizers import get_global_step

log = logging.getLogger(__name__)


def latest_state(checkpoint_dir, variables):
    """(global step, {Variable: value}, {(Variable, rule, slot): value}, {table: {field:
    array}}, [input position]) of the latest checkpoint in `checkpoint_dir`, or None when it
    has none. Every variable and embedding table of the graph must be in it."""
    if not checkpoint_dir:
        return None
    checkpoint = files.latest(checkpoint_dir)
    if checkpoint is None:
        return None
    return checkpoint_state(checkpoint, variables)


def checkpoint_state(checkpoint, variables):
    """As latest_state, of the checkpoint in directory `checkpoint`."""
    step, values, slots = files.read_checkpoint(checkpoint)
    tables = files.read_tables(checkpoint)
    by_name = {v.name: v for v in variables if not v.is_table}
    table_vars = {v.name: v for v in variables if v.is_table}
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
            {table_vars[n]: fields for n, fields in tables.items() if n in table_vars},
            read_input_positions(checkpoint))


_POSITION_FIELDS, _POSITION_TYPES = ("dataset", "shard", "num_shards", "file", "lines"), \
    (str, int, int, str, int)


def read_input_positions(checkpoint):
    """[(dataset, shard, num_shards, file, lines)] of a checkpoint's index (see
    psflow.checkpoint.write_index); [] for a checkpoint without followed datasets."""
    index = files.read_index(checkpoint)
    positions = []
    try:
        for entry in index.get("input_positions", []):
            position = tuple(entry[k] for k in _POSITION_FIELDS)
            if not all(type(v) is k for v, k in zip(position, _POSITION_TYPES, strict=True)):
                raise ValueError(f"input position {entry!r} has a field of the wrong type")
            positions.append(position)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataLossError(f"checkpoint {checkpoint} has malformed input positions: "
                            f"{exc!r}") from None
    return positions


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


class Saver:
    """TF1's `tf.train.Saver` on psflow's checkpoints: `save(sess, "dir/model.ckpt",
    global_step=step)` writes a checkpoint of the variables (and their optimizer slots) into
    `dir` as `ckpt-STEP` and returns its path; `restore(sess, path)` sets them from the
    checkpoint at `path`, or from the latest one in the folder of a TF-style path such as
    "dir/model.ckpt". On a cluster the parameter servers write and read their own shards,
    and in all but one checkpoint of `full_every` (None: PSFLOW_CHECKPOINT_FULL_EVERY, 10 by
    default; 0 or 1: every one) only the table rows changed since the previous one.
    `var_list` (a list, or a dict of name -> variable) picks the variables; the rest of TF1's
    arguments are accepted and change nothing."""

    def __init__(self, var_list=None, reshape=False, sharded=False, max_to_keep=5,
                 keep_checkpoint_every_n_hours=10000.0, name=None, restore_sequentially=False,
                 saver_def=None, builder=None, defer_build=False, allow_empty=False,
                 write_version=None, pad_step_numbers=False, save_relative_paths=False,
                 filename=None, full_every=None):
        self._graph = get_default_graph()
        if isinstance(var_list, dict):
            var_list = list(var_list.values())
        self._var_list = None if var_list is None else list(var_list)
        self.max_to_keep = max_to_keep if max_to_keep else 1_000_000
        self.full_every = full_every
        self.last_checkpoints = []

    def _variables(self):
        step = get_global_step(self._graph)
        chosen = self._var_list if self._var_list is not None else self._graph.variables
        return [v for v in chosen if v is not step and not v.local], step

    def save(self, sess, save_path, global_step=None, latest_filename=None,
             meta_graph_suffix="meta", write_meta_graph=True, write_state=True,
             strip_default_attrs=False, save_debug_info=False):
        session = getattr(sess, "session", sess)  # a MonitoredTrainingSession's own session
        variables, step = self._variables()
        directory = os.path.dirname(os.path.abspath(str(save_path)))
        if step is None:
            step = int(global_step) if global_step is not None else 0
        path = session.save_checkpoint(directory, variables, step, self.max_to_keep,
                                       self.full_every)
        self.last_checkpoints = [p for p in self.last_checkpoints if p != path] + [path]
        return path

    def restore(self, sess, save_path):
        session = getattr(sess, "session", sess)
        checkpoint = _checkpoint_at(save_path)
        variables, step = self._variables()
        state = checkpoint_state(checkpoint, variables)
        session.store.restore(state, step)
        log.info("restored %s (global step %d)", checkpoint, state[0])

    def as_saver_def(self):
        return None


def _checkpoint_at(save_path):
    """The checkpoint directory `save_path` names: itself, or the latest checkpoint in its
    folder when it is a TF-style prefix ("dir/model.ckpt")."""
    path = str(save_path)
    if os.path.isfile(os.path.join(path, files.INDEX)):
        return path
    for folder in (path, os.path.dirname(os.path.abspath(path))):
        if os.path.isdir(folder):
            latest = files.latest(folder)
            if latest is not None:
                return latest
    raise NotFoundError(f"no checkpoint at {path!r} (nor in its folder)")


def latest_checkpoint(checkpoint_dir, latest_filename=None):
    """The path of the latest checkpoint in `checkpoint_dir`, or None."""
    return files.latest(checkpoint_dir) if os.path.isdir(str(checkpoint_dir)) else None


def checkpoint_exists(checkpoint_prefix):
    try:
        _checkpoint_at(checkpoint_prefix)
    except Exception:
        return False
    return True
