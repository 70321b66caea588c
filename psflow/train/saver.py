"""Checkpoints of a training job, written by the chief (see psflow.ps.checkpoint for the
files): periodically, at the end, and read back when a job starts with a `checkpoint_dir`
that holds one. Works alike for a local session (one shard file) and a distributed one
(one file per parameter server, written by the servers themselves)."""

import logging
import os
import shutil
import time
import uuid

import numpy as np

from psflow.ps import checkpoint as files

log = logging.getLogger(__name__)


def _rows(var):
    return int(var.shape[0]) if var.shape else 0


def _variable_specs(variables):
    return {v.name: {"shape": [int(d) for d in v.shape], "dtype": np.dtype(v.dtype).name}
            for v in variables}


def _publish(checkpoint_dir, tmp, global_step, max_to_keep):
    """Renames a fully written checkpoint into place, points `latest` at it, prunes."""
    name = files.checkpoint_name(global_step)
    final = os.path.join(checkpoint_dir, name)
    if os.path.exists(final):  # this step was saved already (say, periodically, then at the end)
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.rename(tmp, final)
        files._fsync_dir(checkpoint_dir)
    files.set_latest(checkpoint_dir, name)
    files.prune(checkpoint_dir, max_to_keep)
    return final


def _new_tmp(checkpoint_dir):
    os.makedirs(checkpoint_dir, exist_ok=True)
    tmp = os.path.join(checkpoint_dir, f".tmp-ckpt-{uuid.uuid4().hex}")
    os.mkdir(tmp)
    return tmp


def save_local(store, variables, global_step_var, checkpoint_dir, max_to_keep):
    """A checkpoint of a LocalVariableStore; returns its directory."""
    tmp = _new_tmp(checkpoint_dir)
    try:
        values, slots, parts = {}, {}, {}
        for var in variables:
            if not store.is_initialized(var):
                continue
            values[var.name] = store.values[var]
            parts[var.name] = [var.name, 0, _rows(var)]
            for rule, rule_slots in store.slots.get(var, {}).items():
                for slot, array in rule_slots.items():
                    slots[(var.name, rule, slot)] = array
        step = int(store.values[global_step_var]) if store.is_initialized(global_step_var) else 0
        digest = files.write_shard(os.path.join(tmp, "shard-0.npz"), values, slots, step)
        files.write_index(tmp, step, [{"file": "shard-0.npz", "sha256": digest, "parts": parts}],
                          _variable_specs([v for v in variables if v.name in values]))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _publish(checkpoint_dir, tmp, step, max_to_keep)


def save_distributed(store, checkpoint_dir, max_to_keep):
    """A checkpoint of a DistributedStore: every shard writes its own file; returns its
    directory."""
    from psflow.proto import psflow_pb2 as pb
    tmp = _new_tmp(checkpoint_dir)
    try:
        calls = [(client, "SaveShard", pb.SaveShardRequest(
            path=os.path.join(os.path.abspath(tmp), f"shard-{client.index}.npz")))
            for client in store.clients]
        replies = store.fanout.call(calls)
        shards = []
        step = 0
        for client, reply in zip(store.clients, replies):
            saved = set(reply.variables)
            parts = {p.name: [p.variable.name, p.start, p.stop]
                     for p in store.placement.shard_parts(client.index) if p.name in saved}
            shards.append({"file": f"shard-{client.index}.npz", "sha256": reply.sha256,
                           "parts": parts})
            if client.index == 0:
                step = reply.global_step
        files.write_index(tmp, step, shards, _variable_specs(store.variables))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _publish(checkpoint_dir, tmp, step, max_to_keep)


def latest_state(checkpoint_dir, variables):
    """(global step, {Variable: value}, {(Variable, rule, slot): value}) of the latest
    checkpoint in `checkpoint_dir`, or None when it has none. Every variable of the graph
    must be in it."""
    if not checkpoint_dir:
        return None
    checkpoint = files.latest(checkpoint_dir)
    if checkpoint is None:
        return None
    step, values, slots = files.read_checkpoint(checkpoint)
    by_name = {v.name: v for v in variables}
    missing = sorted(set(by_name) - set(values))
    if missing:
        from psflow.errors import DataLossError
        raise DataLossError(f"checkpoint {checkpoint} has no value for {', '.join(missing)}; "
                            "was it written by another model?")
    for name, value in values.items():
        var = by_name.get(name)
        if var is not None and tuple(value.shape) != tuple(var.shape):
            from psflow.errors import DataLossError
            raise DataLossError(f"checkpoint {checkpoint}: {name!r} has shape "
                                f"{tuple(value.shape)}, the graph's variable {tuple(var.shape)}")
    log.info("restoring %s (global step %d)", checkpoint, step)
    return (step, {by_name[n]: v for n, v in values.items() if n in by_name},
            {(by_name[n], rule, slot): v for (n, rule, slot), v in slots.items() if n in by_name})


def restore_local(store, state, global_step_var):
    step, values, slots = state
    for var, value in values.items():
        store.assign(var, value)
    for (var, rule, slot), value in slots.items():
        store.slots.setdefault(var, {}).setdefault(rule, {})[slot] = np.array(value)
    if global_step_var is not None:
        store.assign(global_step_var, np.int64(step))


class CheckpointSaver:
    """Saves every `save_secs` seconds or `save_steps` global steps (whichever is given) and
    on `end()`. `save()` is the store-specific function that writes one checkpoint."""

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
