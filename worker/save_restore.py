"""Checkpoints of a DistributedStore, written and read through its shards: every shard writes
its own file of a checkpoint, and a restore sends each shard its part of a checkpoint's state,
split by the current placement (tables' rows by the hash of their keys)."""

import os

import numpy as np

from psflow import checkpoint, checkpoint_chain, settings
from psflow.data import stream_state
from psflow.errors import DataLossError, FailedPreconditionError
from psflow.key_index import shard_of_keys
from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb
from .payload_batches import batches


class SaveRestore:
    """DistributedStore's save and restore; it uses the store's `clients`, `fanout`,
    `placement`, `variables`, `tables` and `checkpoint_roots`, and its `initialize`."""

    def check_checkpoint_dir(self, checkpoint_dir):
        """FailedPreconditionError unless every shard may write its files in
        `checkpoint_dir` (each writes its own, below the root it was started with)."""
        wanted = os.path.realpath(checkpoint_dir)
        for shard, root in sorted(self.checkpoint_roots.items()):
            if not root or not any(os.path.commonpath([wanted, r]) == r
                                   for r in root.split(os.pathsep) if r):
                where = f"its checkpoint root is {root}" if root else "it has no checkpoint root"
                raise FailedPreconditionError(
                    f"checkpoint_dir {checkpoint_dir} cannot be written by parameter server "
                    f"{shard} ({self.clients[shard].address}): {where} (launch "
                    "--checkpoint-root DIR, python -m psflow.ps --checkpoint-root DIR)")

    def save(self, checkpoint_dir, variables, global_step, max_to_keep, full_every=None):
        """A checkpoint in which every shard writes its own file (SaveShard); returns its
        directory. The shards hold exactly this store's variables and the global step. A
        shard writes only its tables' changes since its file of the latest checkpoint (a
        delta, see psflow.checkpoint_chain) when it can, and every row in one checkpoint of
        `full_every` (None: PSFLOW_CHECKPOINT_FULL_EVERY; 0 or 1: every one)."""
        if full_every is None:
            full_every = settings.CHECKPOINT_FULL_EVERY.get()
        try:
            previous = checkpoint.latest(checkpoint_dir)
            index = checkpoint.read_index(previous) if previous else None
        except DataLossError:
            previous = index = None  # a damaged latest checkpoint: every file full
        bases = checkpoint_chain.delta_bases(previous, index, len(self.clients), full_every)

        def write(directory):
            calls = []
            for client in self.clients:
                base = bases[client.index]
                calls.append((client, "SaveShard", pb.SaveShardRequest(
                    path=os.path.join(os.path.abspath(directory), f"shard-{client.index}.npz"),
                    since_seq=base[0] if base else 0, since_incarnation=base[1] if base else 0)))
            shards, step, positions = [], 0, []
            for client, reply in zip(self.clients, self.fanout.call(calls), strict=True):
                saved = set(reply.variables)
                placed = self.placement.shard_parts(client.index)
                unset = [p.name for p in placed if p.name not in saved]
                if unset:  # a restarted shard not restored yet: this checkpoint would lack them
                    raise FailedPreconditionError(
                        f"parameter server {client.index} holds no value for {unset[0]!r} "
                        f"(and {len(unset) - 1} more) yet: it restarted and is not restored; "
                        "no checkpoint is written without them")
                parts = {p.name: [p.variable.name, p.start, p.stop] for p in placed}
                base = bases[client.index]
                shards.append(checkpoint_chain.shard_record(
                    {"file": f"shard-{client.index}.npz", "sha256": reply.sha256,
                     "parts": parts}, reply.delta, reply.table_seq, reply.incarnation,
                    base[2] if base else []))
                if client.index == 0:
                    step = reply.global_step
                    positions = [(p.dataset, p.shard, p.num_shards, p.file, p.lines)
                                 for p in reply.input_positions]
            return step, shards, checkpoint.variable_specs(self.variables + self.tables), \
                positions

        return checkpoint.write_checkpoint(checkpoint_dir, write, max_to_keep)

    def restore(self, state, global_step=None, shards=None):
        """Sets a checkpoint's state, split by this placement (on `shards` only, when given):
        the slots, the global step and the input positions first, then the values (which
        wake the workers waiting for them). The global step and the input positions live on
        shard 0 whatever `global_step` names."""
        step, values, slots = state[:3]
        positions = state[4] if len(state) > 4 else []
        shards = set(range(len(self.clients))) if shards is None else set(shards)
        for table, fields in (state[3] if len(state) > 3 else {}).items():
            self._restore_table(table, fields, shards)
        by_shard = {}
        for (var, rule, slot), value in slots.items():
            value = np.asarray(value)
            parts = self.placement.parts_of(var)
            # A slot shaped like its variable is split like it; a scalar one is on every part.
            split = len(parts) > 1 and value.ndim > 0 and value.shape == tuple(var.shape)
            for part in parts:
                if part.shard in shards:
                    data = value[part.start:part.stop] if split else value
                    by_shard.setdefault(part.shard, []).append((part, rule, slot, data))
        for shard in shards:  # each restored shard learns the step it is back at
            by_shard.setdefault(shard, [])
        for shard, items in by_shard.items():
            for k, batch in enumerate(list(batches(items, lambda item: item[3].nbytes)) or [[]]):
                request = pb.InitializeVariablesRequest()
                if k == 0:
                    request.set_global_step = True
                    request.global_step = int(step)
                    if shard == 0:
                        for dataset, part, num_shards, file, lines in positions:
                            request.input_positions.add(dataset=dataset, shard=part,
                                                        num_shards=num_shards, file=file,
                                                        lines=lines)
                for part, rule, slot, data in batch:
                    item = request.slots.add(variable=part.name, rule=rule, slot=slot)
                    codec.encode(data, item.tensor)
                self.clients[shard].call("InitializeVariables", request)
        self.initialize(values, overwrite=True, shards=shards)

    def resume_input_positions(self):
        """Hands the followed datasets of this process the input positions shard 0 has (a
        checkpoint's after a restore, else those of the pushes applied so far)."""
        reply = self.clients[0].call("GetInputPositions", pb.InputPositionsRequest())
        stream_state.resume_from([(p.dataset, p.shard, p.num_shards, p.file, p.lines)
                                  for p in reply.positions])

    def _restore_table(self, table, fields, shards):
        """Sends a checkpoint's rows of `table` to the shards (of `shards`) their keys hash to
        now, in messages within the payload limit."""
        keys = np.asarray(fields["keys"], dtype=np.int64)
        entry_keys = np.asarray(fields.get("entry_keys", keys), dtype=np.int64)
        row_shard = shard_of_keys(keys, len(self.clients))
        entry_shard = shard_of_keys(entry_keys, len(self.clients))
        per_row = {f: a for f, a in fields.items() if np.ndim(a) and len(a) == keys.size
                   and f not in ("entry_keys", "entry_freq")}
        scalars = {f: a for f, a in fields.items() if not np.ndim(a)}
        row_bytes = sum(a[:1].nbytes for a in per_row.values()) or 1
        chunk = max(codec.MAX_PAYLOAD_BYTES // row_bytes, 1)
        for shard in sorted(shards):
            rows = np.flatnonzero(row_shard == shard)
            entries = np.flatnonzero(entry_shard == shard)
            # the first message carries the entries (keys seen, with their counts)
            pieces = [(rows[i:i + chunk], i == 0) for i in range(0, rows.size, chunk)] or \
                [(rows, True)]
            for selected, first in pieces:
                part = {f: a[selected] for f, a in per_row.items()}
                part.update(scalars)
                if first:
                    part["entry_keys"] = entry_keys[entries]
                    if "entry_freq" in fields:
                        part["entry_freq"] = np.asarray(fields["entry_freq"])[entries]
                request = pb.InitializeVariablesRequest()
                item = request.table_rows.add(name=table.name)
                for field, array in part.items():
                    codec.encode(np.asarray(array, order="C"),
                                 item.fields.add(name=field).tensor)
                self.clients[shard].call("InitializeVariables", request)
