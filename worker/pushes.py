"""How a DistributedStore pushes a run's gradients: each to the shards owning its variable
(a table's rows to the shards their keys hash to), all shards at once; the replies carry the
next step's values back. In sync and ssp modes the push to shard 0 goes last and waits for
the step's decision, which the worker then hands to the other shards with its pull (a
commit), so every shard applies the same step (see psflow.ps.sync)."""

import logging
import time

import numpy as np

from psflow import settings
from psflow.data import stream_state
from psflow.proto import psflow_pb2 as pb
from psflow.proto import wire
from .gradient_split import split_gradient
from .placement import keys_by_shard

log = logging.getLogger(__name__)

# Bound on a synchronous step's push to shard 0, which waits for the other workers (the
# shard gives up after PSFLOW_STEP_TIMEOUT and says whom it waited for).
SYNC_CALL_TIMEOUT_S = settings.STEP_TIMEOUT.get() + 30
# Update rules (name and hyperparameters) kept as protos; a learning-rate schedule makes
# many, so the cache is emptied when it holds this many.
RULE_PROTOS_KEPT = 256


class Pushes:
    """DistributedStore's pushes; they use the store's `clients`, `fanout`, `placement`,
    `step`, `worker`, `incarnation`, `consistency`, `_rule_protos` and `_pull_calls` (a
    sync step's values), and set `last_global_step`, `dropped`, `activity` and
    `positions_sent` (the version of the input positions shard 0 has, see stream_state)."""

    def apply_gradients(self, rule, grads_and_vars, global_step=None, consistency=None):
        """Pushes each gradient to the shards owning its variable (all shards at once); the
        push to shard 0 advances the global step when `global_step` is given. In sync and
        ssp modes the push to shard 0 goes last and waits for the step (see psflow.ps.sync).
        `consistency`: the train op's mode (default: the job's)."""
        started = time.perf_counter()
        try:
            self._apply_gradients(rule, grads_and_vars, global_step, consistency)
        finally:
            self.step.pushing += time.perf_counter() - started

    def _apply_gradients(self, rule, grads_and_vars, global_step, consistency):
        consistency = (consistency or self.consistency).effective()
        step = self.step
        rule_proto = self._rule_proto(rule)
        requests = {}
        push_id = None
        if step.run:
            step.pushes += 1
            push_id = pb.PushId(incarnation=self.incarnation, sequence=step.run,
                                index=step.pushes)

        def request_for(shard):
            request = requests.get(shard)
            if request is None:
                request = requests[shard] = wire.PushBuilder(
                    worker=self.worker, global_step=step.global_step)
                request.rule.CopyFrom(rule_proto)
                if push_id is not None:
                    request.id.CopyFrom(push_id)
            return request

        for grad, var in grads_and_vars:
            if var.is_table:
                ids = np.asarray(grad.indices)
                found = self.dedup(ids)
                values = found.sum_rows(np.asarray(grad.values).reshape(
                    ids.size, var.embedding_dim))
                for shard, mine in keys_by_shard(found.unique, len(self.clients)):
                    request_for(shard).add_gradient(var.name, 0, values[mine],
                                                    found.unique[mine], keyed=True)
                continue
            for part, values, indices in split_gradient(grad, var, self.placement, self.dedup):
                request_for(part.shard).add_gradient(
                    part.name, step.versions.get(part.name, 0), values, indices)
        if global_step is not None:
            request_for(0).increment_global_step = True
        version, positions = stream_state.consumed(since=self.positions_sent)
        if positions:  # shard 0 keeps them beside the gradients they come with
            for dataset, shard, num_shards, file, lines in positions:
                request_for(0).input_positions.add(dataset=dataset, shard=shard,
                                                   num_shards=num_shards, file=file,
                                                   lines=lines)
        if consistency.mode != "async":
            self.activity = (f"run {step.run}: in Push, waiting for the other workers' "
                             f"gradients of global step {step.global_step}")
            self._push_in_step(requests, request_for(0), consistency)
            self.positions_sent = version
            return
        self.activity = f"run {step.run}: pushing gradients"
        for shard, request in requests.items():  # the next step's values come back
            request.pull.extend(dict.fromkeys(p.name for p in step.read.get(shard, ())))
        calls = [(self.clients[s], "Push", r) for s, r in requests.items()]
        replies = self.fanout.call(calls)
        self.positions_sent = version
        for (client, _, _), reply in zip(calls, replies, strict=True):
            if client.index == 0:
                step.returned_step = reply.global_step
                if global_step is not None:
                    step.global_step = self.last_global_step = reply.global_step
        step.returned = _values_of(replies)

    def _push_in_step(self, requests, first, consistency):
        """A sync or ssp push: the other shards first, then shard 0, whose reply waits for
        the step's decision (sync) or the staleness bound (ssp); then the other shards'
        values, after they applied the decided step."""
        step = self.step
        mode = pb.Consistency(mode=pb.Consistency.Mode.Value(consistency.mode.upper()),
                              replicas_to_aggregate=consistency.replicas_to_aggregate,
                              staleness=consistency.staleness)
        for request in requests.values():
            request.consistency.CopyFrom(mode)
        others = [(self.clients[s], "Push", r) for s, r in requests.items() if s != 0]
        self.fanout.call(others)
        first.pull.extend(dict.fromkeys(p.name for p in step.read.get(0, ())))
        reply = self.clients[0].call("Push", first, timeout=SYNC_CALL_TIMEOUT_S)
        step.global_step = self.last_global_step = step.returned_step = reply.global_step
        if reply.dropped:
            self.dropped += 1
            log.debug("the gradients of step %d came too late and were dropped",
                      first.global_step)
        commit = reply.decision if consistency.synchronous and reply.HasField("decision") \
            else None
        wanted = {shard: list(dict.fromkeys(parts)) for shard, parts in step.read.items()
                  if shard != 0}
        for shard in requests:  # every shard pushed to applies the step now, read or not
            if shard != 0:
                wanted.setdefault(shard, [])
        calls = self._pull_calls(wanted, commit)
        step.returned = _values_of([reply] + self.fanout.call(calls))

    def _rule_proto(self, rule):
        key = (rule.name, tuple(sorted(rule.hyper.items())))
        proto = self._rule_protos.get(key)
        if proto is None:
            proto = pb.UpdateRule(name=rule.name, hyper={k: float(v) for k, v in
                                                          rule.hyper.items()})
            if len(self._rule_protos) >= RULE_PROTOS_KEPT:
                self._rule_protos.clear()
            self._rule_protos[key] = proto
        return proto


def _values_of(replies):
    """{part name: (array, version)} of the values replies carry (proto.wire.NamedValue)."""
    return {item.name: (item.array, item.version) for reply in replies for item in reply.values}
