"""A copy of a shard's state for a replica joining its chain (the CopyShard rpc), and applying
one. The copy is a series of ShardPiece messages: the declarations, each table's state a chunk
of rows at a time, each dense variable's value and slots, the sync pushes waiting for their
step, then the end (membership, the remembered push answers, the global step, the rest of the
sync and ssp bookkeeping (psflow.ps.sync_copy), and the table sequence the copy is complete up
to).

A first copy reads every row while training goes on; the next ones read only the rows changed
or removed after the previous copy's end ("rows changed since X", psflow.table_changes), so a
joiner catches up in rounds that shrink. The last one is read while the source holds the
order of the shard's log (`final`), and so is the state after exactly the writes up to
`applied_seq`: the joiner applies the later ones as they are forwarded to it."""

import numpy as np

from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb
from psflow.table_changes import ChangesLost
from . import faults
from .sync_copy import pending_push, replace_sync, sync_pieces

# Rows of a table in one piece: with a dim-16 float table and one slot, about 5 MB.
CHUNK_ROWS = 1 << 15


def _write(method, message):
    return pb.ShardPiece(method=method, request=message.SerializeToString())


def _declarations(store):
    request = pb.DeclareVariablesRequest()
    for name, var in list(store.variables.held.items()):
        request.variables.add(name=name, dtype=codec.dtype_name(var.dtype), shape=var.shape)
    for held in list(store.tables.held.values()):
        name, dim, dtype, initializer, filter_freq, steps_to_live, max_rows = held.spec
        params = {k: float(v) for k, v in initializer if k != "kind"}
        request.tables.add(name=name, dim=dim, dtype=dtype, initializer=dict(initializer)["kind"],
                           initializer_params=params, filter_freq=filter_freq,
                           steps_to_live=steps_to_live, max_rows=max_rows)
    return _write("DeclareVariables", request)


def _rows_piece(name, fields):
    request = pb.InitializeVariablesRequest()
    rows = request.table_rows.add(name=name)
    for field, array in fields.items():
        codec.encode(array, rows.fields.add(name=field).tensor)
    return _write("InitializeVariables", request)


def _table_pieces(store, since, chunk_rows, replica):
    for name, held in list(store.tables.held.items()):
        if since <= 0:
            for chunk in held.table.state_chunks(held.lock, chunk_rows):
                yield _rows_piece(name, chunk)
                faults.hit("mid-copy", store.shard, replica)
            continue
        with held.lock:
            changes = held.table.changes_since(since, with_state=True)
            layout = held.table.state_layout()
        if changes.removed.size:
            yield pb.ShardPiece(removed=pb.TableRemovals(table=name,
                                                         keys=codec.encode(changes.removed)))
        state = changes.state
        rows, entries = state["keys"].size, state["entry_keys"].size
        for start in range(0, max(rows, entries), chunk_rows):
            yield _rows_piece(name, {
                field: array if layout.get(field, ("row",))[0] == "scalar"
                else array[start:start + chunk_rows] for field, array in state.items()})


def _dense_pieces(store):
    for name, var in list(store.variables.held.items()):
        request = pb.InitializeVariablesRequest(overwrite=True)
        with var.lock:
            if var.value is None:
                continue
            codec.encode(var.value, request.values.add(name=name).tensor)
            for rule, slots in var.slots.items():
                for slot, array in slots.items():
                    codec.encode(array, request.slots.add(variable=name, rule=rule,
                                                          slot=slot).tensor)
        yield _write("InitializeVariables", request)


def _end(store, upto, applied_seq, sync):
    end = pb.ShardCopyEnd(upto=upto, incarnation=store.tables.incarnation,
                          applied_seq=applied_seq, global_step=store.global_step,
                          table_step=store.tables.step, sync=sync)
    for index, registered, done, *_ in store.members.rows():
        if registered:
            end.registered.append(index)
        if done:
            end.done.append(index)
    for (worker, push_id), result in store.push_answers():
        answer = end.push_answers.add(worker=worker, staleness=result.staleness,
                                      global_step=result.global_step, dropped=result.dropped)
        answer.id.incarnation, answer.id.sequence, answer.id.index = push_id
    if store.holds_global_step:
        for dataset, shard, num_shards, file, lines in store.input_positions.all():
            end.input_positions.add(dataset=dataset, shard=shard, num_shards=num_shards,
                                    file=file, lines=lines)
    return pb.ShardPiece(end=end)


def copy_pieces(store, since=0, incarnation=0, applied_seq=0, chunk_rows=CHUNK_ROWS,
                replica=0):
    """The ShardPiece messages of a copy of `store` (a ShardStore): everything, or with `since`
    the table rows changed or removed after that sequence of the tables' `incarnation`
    (ChangesLost when they no longer know, or of another incarnation). `applied_seq` goes in
    the end (the caller's log position, when it holds the log's order); `replica` is the
    source's place in its chain (for ps.faults' "mid-copy")."""
    tables = store.tables
    since = int(since)
    if since > 0 and int(incarnation) != tables.incarnation:
        raise ChangesLost(f"shard {store.shard}'s tables are of another incarnation than the "
                          "copy's; a full copy is needed")
    upto = tables.clock.value  # every change after it is in the next copy
    yield _declarations(store)
    yield from _table_pieces(store, since, chunk_rows, replica)
    yield from _dense_pieces(store)
    pending, sync = sync_pieces(store)
    yield from pending
    yield _end(store, upto, applied_seq, sync)


def serve(store, replication, request):
    """The pieces answering the CopyShardRequest `request` on a replica (`replication`, its
    ps.replication.Replication): a `final` copy only at the caller's epoch, read while no
    write of the log is applied, its end naming the last write it holds."""
    if not request.final:
        return copy_pieces(store, request.since, request.incarnation,
                           replica=replication.config.index)
    replication.chain.check_epoch(request.epoch, "the last copy of the shard")
    return iter(replication.in_order(lambda applied_seq: list(
        copy_pieces(store, request.since, request.incarnation, applied_seq))))


class CopyApplier:
    """Applies a copy's pieces to a ShardStore: `apply_write(method, request)` (its bytes, or
    the message parsed) applies a DeclareVariables or InitializeVariables as the servicer
    does. Counts the table rows."""

    def __init__(self, store, apply_write):
        self.store = store
        self._apply_write = apply_write
        self.rows = 0
        self._pending = []  # the pending sync pushes of the copy under way

    def apply(self, piece):
        """Applies one piece; returns its ShardCopyEnd for the last one, else None."""
        if piece.method:
            if piece.method not in ("DeclareVariables", "InitializeVariables"):
                raise ValueError(f"a shard copy holds no {piece.method} writes")
            request = piece.request
            if piece.method == "InitializeVariables":  # parsed once: counted, then applied
                request = pb.InitializeVariablesRequest.FromString(piece.request)
                for rows in request.table_rows:
                    for field in rows.fields:
                        if field.name == "keys":
                            self.rows += int(np.prod(field.tensor.shape) or 0)
            self._apply_write(piece.method, request)
            return None
        if piece.HasField("removed"):
            self.store.tables.remove_keys(piece.removed.table,
                                          codec.decode(piece.removed.keys, "removed keys"))
            return None
        if piece.HasField("pending"):
            self._pending.append(pending_push(self.store, piece.pending))
            return None
        if piece.HasField("end"):
            self._finish(piece.end)
            return piece.end
        raise ValueError("an empty piece of a shard copy")

    def _finish(self, end):
        store = self.store
        for index in end.registered:
            store.members.register(index)
        for index in end.done:
            store.members.done(index)
        if store.holds_global_step:
            store.set_global_step(end.global_step)
            store.input_positions.replace(
                [(p.dataset, p.shard, p.num_shards, p.file, p.lines)
                 for p in end.input_positions])
        store.tables.note_step(end.table_step)
        store.remember_push_answers(
            [(a.worker, (a.id.incarnation, a.id.sequence, a.id.index), list(a.staleness),
              a.global_step, a.dropped) for a in end.push_answers])
        if end.HasField("sync"):
            replace_sync(store, self._pending, end.sync)
        self._pending = []
