"""A shard's synchronous and bounded-staleness bookkeeping (psflow.ps.sync) in a copy of the
shard (psflow.ps.shard_copy): the sync pushes waiting for their step, each a PendingPush piece
of its own (its gradients as checked: already cast to the variable's dtype), then the rest in
the copy's end (SyncCopy). A joiner takes them in place of its own, so that it holds what the
replica it copied holds: the same steps decided or committed, from the same gradients."""

import numpy as np

from psflow.indexed_slices import IndexedSlices
from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb


def _gradient(held, grad, version, keyed):
    message = pb.Gradient(name=held.name, version=int(version), keyed=keyed)
    if isinstance(grad, IndexedSlices):
        codec.encode(grad.values, message.values)
        codec.encode(grad.indices, message.indices)
    else:
        codec.encode(grad, message.values)
    return message


def sync_pieces(store):
    """([ShardPiece of each pending push], SyncCopy) of `store`'s bookkeeping, read at once."""
    snapshot = store.sync.snapshot()
    tables = store.tables.held
    pieces = []
    for step, by_worker in sorted(snapshot["pending"].items()):
        for worker, (checked, rule) in sorted(by_worker.items()):
            pending = pb.PendingPush(step=step, worker=worker,
                                     rule=pb.UpdateRule(name=rule.name, hyper=rule.hyper))
            for held, grad, version in checked:
                keyed = tables.get(held.name) is held
                pending.gradients.append(_gradient(held, grad, version, keyed))
            pieces.append(pb.ShardPiece(pending=pending))
    step, workers = snapshot["last_decision"]
    sync = pb.SyncCopy(last_decision=pb.StepDecision(step=step, workers=workers),
                       applied=snapshot["applied"], dropped=snapshot["dropped"],
                       steps=snapshot["steps"], clocks=snapshot["clocks"])
    for step, workers in sorted(snapshot["arrivals"].items()):
        sync.arrivals.add(step=step, workers=workers)
    for step, workers in sorted(snapshot["decisions"].items()):
        sync.decisions.add(step=step, workers=workers)
    return pieces, sync


def pending_push(store, message):
    """(step, worker, (checked gradients, rule)) of a PendingPush for `store`: each gradient
    rebuilt against the store's variable or table (declared by then), as the source held it."""
    checked = []
    for gradient in message.gradients:
        what = f"pending gradient for {gradient.name!r}"
        values = codec.decode(gradient.values, what)
        if gradient.keyed:
            held = store.tables.get(gradient.name)
            keys = codec.decode(gradient.indices, what).astype(np.int64, copy=False)
            grad = IndexedSlices(values, keys, (-1, held.dim))
        else:
            held = store.variables.get(gradient.name)
            grad = values if not gradient.HasField("indices") else IndexedSlices(
                values, codec.decode(gradient.indices, what), held.shape)
        checked.append((held, grad, gradient.version))
    rule = store.rule(message.rule.name, dict(message.rule.hyper))
    return message.step, message.worker, (checked, rule)


def replace_sync(store, pending, sync):
    """Replaces `store`'s bookkeeping by a copy's: `pending` [(step, worker, (checked,
    rule))] as pending_push gives them, and `sync` the SyncCopy of the copy's end."""
    by_step = {}
    for step, worker, entry in pending:
        by_step.setdefault(step, {})[worker] = entry
    store.sync.replace({
        "pending": by_step,
        "arrivals": {a.step: list(a.workers) for a in sync.arrivals},
        "decisions": {d.step: tuple(d.workers) for d in sync.decisions},
        "last_decision": (sync.last_decision.step, tuple(sync.last_decision.workers)),
        "applied": sync.applied, "dropped": sync.dropped, "steps": sync.steps,
        "clocks": dict(sync.clocks)})
