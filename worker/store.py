"""The worker's variable store: the Variables live on the parameter-server shards.

A step pulls the variables its fetches need from all owning shards at once (`prefetch`), and
pushes each gradient to the shards that own it, all at once (`apply_gradients`); the replies
carry the next step's values back. In sync mode the push to shard 0 goes last and waits for
the step's decision, which the worker then hands to the other shards with its pull (a
commit), so every shard applies the same step (see psflow.ps.sync).
"""

import itertools
import logging
import os
import secrets
import threading
import time

import numpy as np

from psflow import checkpoint, settings
from psflow.errors import (DeadlineExceededError, FailedPreconditionError, InvalidArgumentError,
                           PsflowError, UnavailableError)
from psflow.key_index import RunDedups, array_key, shard_of_keys
from psflow.embedding_variable import is_table
from psflow.gradients import IndexedSlices
from psflow.local_store import check_rows
from psflow.proto import codec, wire
from psflow.proto import psflow_pb2 as pb
from psflow.transport import memory
from psflow.train.consistency import Consistency
from psflow.train.optimizers import get_global_step

from .client import Fanout, ShardClient, worker_request
from .placement import PARTITION_BYTES, Placement

log = logging.getLogger(__name__)

# How long a non-chief waits for the chief to initialize the variables before giving up.
INIT_TIMEOUT_S = settings.INIT_TIMEOUT.get()
# How long to wait for the parameter servers to come up.
CONNECT_TIMEOUT_S = settings.CONNECT_TIMEOUT.get()
# How long a worker's farewell (WorkerDone) waits for each shard.
FAREWELL_TIMEOUT_S = settings.FAREWELL_TIMEOUT.get()
# Bound on a synchronous step's push to shard 0, which waits for the other workers (the
# shard gives up after PSFLOW_STEP_TIMEOUT and says whom it waited for).
SYNC_CALL_TIMEOUT_S = settings.STEP_TIMEOUT.get() + 30


def _batches(items, size_of, limit=codec.MAX_PAYLOAD_BYTES):
    """Groups items so that each group's total size stays within `limit` (an item larger than
    the limit travels alone)."""
    batch, total = [], 0
    for item in items:
        size = size_of(item)
        if batch and total + size > limit:
            yield batch
            batch, total = [], 0
        batch.append(item)
        total += size
    if batch:
        yield batch


class _StepState(threading.local):
    """What one thread's current run pulled: values, versions, the global step, and the parts
    read from each shard. `returned` holds the values the last push's replies carried
    back ({part name: (array, version)}) with `returned_step`, for the next training run.
    `run` and `pushes` name the run's pushes (see begin_run)."""

    def __init__(self):
        self.values = {}
        self.versions = {}
        self.global_step = 0
        self.read = {}
        self.returned = {}
        self.returned_step = None
        self.run = 0  # this run's number (0: unnumbered), and its pushes so far
        self.pushes = 0
        self.commit = None  # sync: the last step decided, for the other shards
        self.dedups = RunDedups()  # this run's lookups' ids
        self.rows = {}  # (variable, ids key) -> distinct rows pulled ahead of the run
        self.pushing = 0.0  # seconds this run spent pushing, and pulling rows during it
        self.pulling = 0.0


class DistributedStore:
    """The variable store of a DistributedSession: the LocalVariableStore interface (read,
    assign, apply_gradients, save, restore) backed by parameter-server shards. `consistency`
    is the job's mode, for train ops that do not name their own."""

    def __init__(self, graph, task, partition_bytes=PARTITION_BYTES, consistency=None):
        memory.tune_allocator()
        self.task = task
        self.worker = task.worker_index
        self.clients = [ShardClient(i, address) for i, address in enumerate(task.ps_addresses)]
        self.fanout = Fanout(len(self.clients))
        self.global_step_var = get_global_step(graph)
        self.tables = [v for v in graph.variables if is_table(v)]
        self.variables = [v for v in graph.variables if v is not self.global_step_var
                          and not is_table(v)]
        self.placement = Placement(self.variables, len(self.clients), partition_bytes)
        self.step = _StepState()
        self.last_global_step = 0
        self._rule_protos = {}
        self.consistency = consistency or Consistency()
        # Names this process's pushes apart from those of an earlier run of the same worker.
        self.incarnation = secrets.randbits(64) or 1
        self._runs = itertools.count(1)
        self.dropped = 0  # steps whose gradients came too late (sync)
        self.checkpoint_roots = {}  # shard -> the folder it writes checkpoints in ("": none)
        # What this worker is doing, in words, for the heartbeats (a stuck job names it).
        self.activity = "starting its session"

    # -- set-up ------------------------------------------------------------------------------
    def register(self, timeout=CONNECT_TIMEOUT_S):
        """Registers with every shard, waiting (bounded) for each to come up."""
        deadline = time.monotonic() + timeout
        for client in self.clients:
            remaining = max(deadline - time.monotonic(), 0.1)
            try:
                reply = client.call("RegisterWorker", worker_request(self.worker),
                                    timeout=remaining, wait_for_ready=True)
                self.checkpoint_roots[client.index] = reply.checkpoint_root
            except DeadlineExceededError:
                raise DeadlineExceededError(
                    f"parameter server {client.index} at {client.address} did not answer within "
                    f"{timeout:.0f} s") from None

    def declare(self):
        """Declares every variable part on its shard; returns the set of parts that already
        have values."""
        initialized = set()
        tables = [_table_spec(t) for t in self.tables]
        for client in self.clients:
            specs = [pb.VariableSpec(name=p.name, dtype=p.dtype.name, shape=p.shape)
                     for p in self.placement.shard_parts(client.index)]
            if specs or tables:
                reply = client.call("DeclareVariables", pb.DeclareVariablesRequest(
                    variables=specs, tables=tables))
                initialized.update(reply.initialized)
        return initialized

    def init_table(self, var):
        """Tables are declared on every shard with the session and start empty."""

    def initialize(self, values, overwrite=False, shards=None):
        """Sends initial values ({Variable: array}) to the shards that own them (only to
        `shards`, when given)."""
        by_shard = {}
        for var, value in values.items():
            value = np.asarray(value, dtype=var.dtype)
            for part in self.placement.parts_of(var):
                if shards is not None and part.shard not in shards:
                    continue
                data = value[part.start:part.stop] if len(part.shape) else value
                by_shard.setdefault(part.shard, []).append((part, data))
        for shard, items in by_shard.items():
            client = self.clients[shard]
            for batch in _batches(items, lambda item: item[0].nbytes):
                request = pb.InitializeVariablesRequest(overwrite=overwrite)
                for part, data in batch:
                    codec.encode(data, request.values.add(name=part.name).tensor)
                client.call("InitializeVariables", request)

    def restore(self, state, global_step=None, shards=None):
        """Sets a checkpoint's state, split by this placement (on `shards` only, when given):
        the slots and the global step first, then the values (which wake the workers waiting
        for them). The global step lives on shard 0 whatever `global_step` names."""
        step, values, slots = state[:3]
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
            batches = list(_batches(items, lambda item: item[3].nbytes)) or [[]]
            for k, batch in enumerate(batches):
                request = pb.InitializeVariablesRequest()
                if k == 0:
                    request.set_global_step = True
                    request.global_step = int(step)
                for part, rule, slot, data in batch:
                    item = request.slots.add(variable=part.name, rule=rule, slot=slot)
                    codec.encode(data, item.tensor)
                self.clients[shard].call("InitializeVariables", request)
        self.initialize(values, overwrite=True, shards=shards)

    def wait_initialized(self, timeout=INIT_TIMEOUT_S, shards=None):
        """Blocks until the chief has initialized every variable (woken by the shards)."""
        deadline = time.monotonic() + timeout
        for client in self.clients:
            if shards is not None and client.index not in shards:
                continue
            names = [p.name for p in self.placement.shard_parts(client.index)]
            while names:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeadlineExceededError(
                        f"waited {timeout:.0f} s for the chief to initialize the variables; still "
                        f"missing on parameter server {client.index}: {', '.join(names[:5])}")
                wait_ms = int(min(remaining, 10.0) * 1000)
                reply = client.call("WaitInitialized", pb.WaitInitializedRequest(
                    names=names, timeout_ms=wait_ms), timeout=wait_ms / 1000 + 30)
                names = list(reply.missing)
                if names:
                    log.info("waiting for the chief to initialize %d variables", len(names))

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

    def save(self, checkpoint_dir, variables, global_step, max_to_keep):
        """A checkpoint in which every shard writes its own file (SaveShard); returns its
        directory. The shards hold exactly this store's variables and the global step."""

        def write(directory):
            calls = [(client, "SaveShard", pb.SaveShardRequest(
                path=os.path.join(os.path.abspath(directory), f"shard-{client.index}.npz")))
                for client in self.clients]
            shards, step = [], 0
            for client, reply in zip(self.clients, self.fanout.call(calls)):
                saved = set(reply.variables)
                parts = {p.name: [p.variable.name, p.start, p.stop]
                         for p in self.placement.shard_parts(client.index) if p.name in saved}
                shards.append({"file": f"shard-{client.index}.npz", "sha256": reply.sha256,
                               "parts": parts})
                if client.index == 0:
                    step = reply.global_step
            return step, shards, checkpoint.variable_specs(self.variables + self.tables)

        return checkpoint.write_checkpoint(checkpoint_dir, write, max_to_keep)

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

    # -- a step ------------------------------------------------------------------------------
    def begin_run(self):
        """Numbers this thread's next run. Its pushes carry the number, and a run tried again
        (see DistributedSession.with_recovery) keeps it, so a shard that took a push already
        does not apply it twice."""
        step = self.step
        step.run = next(self._runs)
        step.pushing = step.pulling = 0.0

    def prefetch(self, variables, fresh=True, reuse=False, consistency=None, lookups=(),
                 rows=(), train=False):
        """Pulls `variables` (and the global step) for this thread's run, all shards at once.
        `fresh` starts a new run's state; otherwise the values join the current run's. With
        `reuse`, values the previous push's replies carried back are taken instead of pulled
        (a training run: they are as new as a pull would give). `consistency`: the run's
        mode (default: the job's). `lookups`: variables the run reads only through lookups
        (read_rows pulls their rows during the run). `rows`: (variable, ids) of lookups
        whose ids are known already (fed): their rows come in the same calls, one per
        shard for all tables, before the run."""
        self.activity = f"run {self.step.run}: pulling variables"
        step = self.step
        returned, returned_step = step.returned, step.returned_step
        if fresh:
            step.pushes = 0
            step.values = {}
            step.versions = {}
            step.read = {}
            step.returned = {}
            step.returned_step = None
            step.dedups.clear()
            step.rows = {}
        if not reuse:
            returned, returned_step = {}, None
        wanted = {}
        pieces = {}
        needs_step = False
        for var in variables:
            if var is self.global_step_var:
                needs_step = True
                continue
            for part in self.placement.parts_of(var):
                step.read.setdefault(part.shard, []).append(part)
                kept = returned.get(part.name)
                if kept is None:
                    wanted.setdefault(part.shard, []).append(part)
                else:
                    pieces[part.name], step.versions[part.name] = kept
        if needs_step:
            if returned_step is None or wanted:
                wanted.setdefault(0, [])
            else:
                step.global_step = returned_step
        commit = None
        looked_up = {p.shard for var in lookups if not is_table(var)
                     for p in self.placement.parts_of(var)}
        if any(is_table(var) for var in lookups):
            looked_up.update(range(len(self.clients)))  # keys may hash to any shard
        if (consistency or self.consistency).synchronous and \
                any(s != 0 for s in set(wanted) | looked_up):
            # The other shards may not have applied the last step yet: learn it from shard 0
            # and have them apply it first, so the values are never a mix of two steps.
            first = self._pull_calls({0: wanted.pop(0, [])})
            for (client, _, _), reply in zip(first, self.fanout.call(first)):
                step.global_step = self.last_global_step = reply.global_step
                self._take_values(reply.values, pieces, step.versions)
                commit = reply.decision
            if commit.step < 0:
                commit = None
        step.commit = commit  # for the rows that lookups pull during the run
        calls = self._pull_calls(wanted, commit)
        row_calls, landing = self._row_calls(rows, commit, train)
        replies = self.fanout.call(calls + row_calls)
        for (client, _, _), reply in zip(calls, replies):
            if client.index == 0:
                step.global_step = self.last_global_step = reply.global_step
            self._take_values(reply.values, pieces, step.versions)
        for places, reply in zip(landing, replies[len(calls):]):
            _land(places, reply, step.versions)
        for var in variables:
            if var is self.global_step_var:
                continue
            parts = self.placement.parts_of(var)
            if len(parts) == 1:
                step.values[var] = pieces[parts[0].name]
            else:
                step.values[var] = np.concatenate([pieces[p.name] for p in parts])

    def _pull_calls(self, wanted, commit=None):
        """Pull calls for {shard: [parts]} (an empty list pulls just the global step)."""
        calls = []
        for shard, parts in wanted.items():
            client = self.clients[shard]
            for batch in _batches(parts, lambda p: p.nbytes) if parts else [[]]:
                request = pb.PullRequest(names=[p.name for p in batch])
                if commit is not None and shard != 0:
                    request.commit.CopyFrom(commit)
                calls.append((client, "Pull", request))
        return calls

    @staticmethod
    def _take_values(items, pieces, versions):
        for item in items:  # proto.wire.NamedValue: the array is read already
            pieces[item.name] = item.array
            versions[item.name] = item.version

    def lost_shards(self, timeout):
        """Registers again with every shard, waiting up to `timeout` for those that are
        restarting, and declares the variables again; returns the shards that came back
        without their variables (a restarted parameter server)."""
        lost = []
        deadline = time.monotonic() + timeout
        for client in self.clients:
            while True:
                # wait_for_ready covers a server that is down; a call that reached it just
                # as it went down fails at once, and is tried again within the bound.
                try:
                    client.call("RegisterWorker", worker_request(self.worker),
                                timeout=max(deadline - time.monotonic(), 0.1),
                                wait_for_ready=True)
                    break
                except UnavailableError:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.2)
            parts = self.placement.shard_parts(client.index)
            if not parts:
                continue
            reply = client.call("DeclareVariables", pb.DeclareVariablesRequest(variables=[
                pb.VariableSpec(name=p.name, dtype=p.dtype.name, shape=p.shape) for p in parts]))
            if len(reply.initialized) < len(parts):
                lost.append(client.index)
        self.step.returned = {}
        self.step.returned_step = None
        return lost

    def dedup(self, ids):
        """The Dedup of `ids`, computed once per run whoever asks (lookups and gradients)."""
        return self.step.dedups(ids)

    def _row_calls(self, lookups, commit, train=False):
        """PullRows calls, one per shard, for the distinct rows of every (variable, ids) of
        `lookups` (for a table, its keys: a training run creates their rows), and where each
        reply's rows land: [(array, lo, hi, part)] per call. The arrays are kept as this
        run's rows (see read_rows)."""
        step = self.step
        by_shard = {}
        keyed = {}  # shard -> [(out, positions, table, keys, counts)]
        for var, ids in lookups:
            ids = np.asarray(ids)
            key = (var, array_key(ids))
            if key in step.rows:
                continue
            if is_table(var):
                self._key_selections(var, ids, keyed)
                continue
            check_rows(var, ids, var.shape[0])
            dedup = self.dedup(ids)
            unique = dedup.unique
            out = np.empty((unique.size,) + tuple(var.shape[1:]), dtype=var.dtype)
            step.rows[key] = (ids, out)
            parts = self.placement.parts_of(var)
            bounds = np.searchsorted(unique, [p.start for p in parts] + [parts[-1].stop])
            for part, lo, hi in zip(parts, bounds[:-1].tolist(), bounds[1:].tolist()):
                if hi > lo:
                    by_shard.setdefault(part.shard, []).append((out, lo, hi, part, unique))
        calls, landing = [], []
        for shard in sorted(set(by_shard) | set(keyed)):
            selected = by_shard.get(shard, [])
            request = pb.PullRowsRequest(global_step=step.global_step)
            for out, lo, hi, part, unique in selected:
                codec.encode(unique[lo:hi] - part.start,
                             request.selections.add(name=part.name).rows)
            places = [(out, lo, hi, part) for out, lo, hi, part, _ in selected]
            for out, positions, table, keys, counts in keyed.get(shard, ()):
                selection = request.keys.add(name=table.name, train=train)
                codec.encode(keys, selection.keys)
                if train:
                    codec.encode(counts, selection.counts)
                places.append((out, positions, None, table))
            if commit is not None and shard != 0:
                request.commit.CopyFrom(commit)
            calls.append((self.clients[shard], "PullRows", request))
            landing.append(places)
        return calls, landing

    def _key_selections(self, table, ids, keyed):
        """Adds the distinct keys of `ids` to `keyed` by the shard their hash picks; their rows
        will land in a new array kept as this run's rows of (table, ids)."""
        dedup = self.dedup(ids)
        keys = dedup.unique
        counts = dedup.counts()
        out = np.empty((keys.size, table.embedding_dim), dtype=table.dtype)
        self.step.rows[(table, array_key(ids))] = (ids, out)
        shards = shard_of_keys(keys, len(self.clients))
        for shard in np.unique(shards).tolist():
            positions = np.flatnonzero(shards == shard)
            keyed.setdefault(shard, []).append((out, positions, table, keys[positions],
                                                counts[positions]))

    def read_rows(self, var, indices, train=False):
        """Rows `indices` (any integer shape) of `var` (for a table, keys; a training run
        creates their rows): those pulled ahead of the run when
        its ids were fed, else pulled now from the shards that own them, each distinct row
        once, all shards at once."""
        step = self.step
        pulled = step.rows.get((var, array_key(indices)))
        if pulled is None:
            started = time.perf_counter()
            calls, landing = self._row_calls([(var, indices)], step.commit, train)
            for places, reply in zip(landing, self.fanout.call(calls)):
                _land(places, reply, step.versions)
            pulled = step.rows[(var, array_key(indices))]
            step.pulling += time.perf_counter() - started
        rows = pulled[1]
        return rows[self.dedup(indices).inverse].reshape(indices.shape + tuple(var.shape[1:]))

    def read(self, var):
        if var is self.global_step_var:
            return np.int64(self.step.global_step)
        value = self.step.values.get(var)
        if value is None:
            self.prefetch([var], fresh=False)
            value = self.step.values[var]
        return value

    def initialize_value(self, var, value):
        """What an initializer op does on a cluster: nothing. The chief gave every variable its
        initial value (or a checkpoint's) when its session started, and the global step lives
        on shard 0; a worker that runs global_variables_initializer(), as TF1 scripts do, must
        not reset a model that others are training."""

    def assign(self, var, value):
        if var is self.global_step_var:
            raise InvalidArgumentError("the global step lives on parameter server 0 and "
                                       "advances with each training step; it cannot be assigned")
        value = np.asarray(value, dtype=var.dtype)
        if value.shape != tuple(var.shape):
            raise InvalidArgumentError(f"cannot assign a value of shape {value.shape} to "
                                       f"variable {var.name!r} of shape {var.shape}")
        self.initialize({var: value}, overwrite=True)
        self.step.values.pop(var, None)

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
            if is_table(var):
                ids = np.asarray(grad.indices)
                found = self.dedup(ids)
                values = found.sum_rows(np.asarray(grad.values).reshape(
                    ids.size, var.embedding_dim))
                shards = shard_of_keys(found.unique, len(self.clients))
                for shard in np.unique(shards).tolist():
                    mine = shards == shard
                    request_for(shard).add_gradient(var.name, 0, values[mine],
                                                    found.unique[mine], keyed=True)
                continue
            for part, values, indices in _split_gradient(grad, var, self.placement,
                                                         self.dedup):
                request_for(part.shard).add_gradient(
                    part.name, step.versions.get(part.name, 0), values, indices)
        if global_step is not None:
            request_for(0).increment_global_step = True
        if consistency.mode != "async":
            self.activity = (f"run {step.run}: in Push, waiting for the other workers' "
                             f"gradients of global step {step.global_step}")
            self._push_in_step(requests, request_for(0), consistency)
            return
        self.activity = f"run {step.run}: pushing gradients"
        for shard, request in requests.items():  # the next step's values come back
            request.pull.extend(dict.fromkeys(p.name for p in step.read.get(shard, ())))
        calls = [(self.clients[s], "Push", r) for s, r in requests.items()]
        replies = self.fanout.call(calls)
        for (client, _, _), reply in zip(calls, replies):
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
            if len(self._rule_protos) >= 256:  # a learning-rate schedule makes many
                self._rule_protos.clear()
            self._rule_protos[key] = proto
        return proto

    def traffic(self):
        """(bytes sent, bytes received) in the Pull, PullRows and Push messages so far."""
        return (sum(c.sent for c in self.clients), sum(c.received for c in self.clients))

    # -- membership ----------------------------------------------------------------------------
    def heartbeat(self, local_step, loss, examples=0):
        request = pb.HeartbeatRequest(task_index=self.worker, local_step=local_step, loss=loss,
                                      activity=self.activity, examples=examples)
        for client in self.clients:
            client.call("Heartbeat", request, timeout=5.0)

    def done(self):
        """Tells every shard this worker is done. A shard that does not answer (frozen, or
        gone already) is named in a warning and skipped: finishing is not failing, and the
        launcher ends what is left. Returns the shards that did not answer."""
        silent = []
        for client in self.clients:
            try:
                client.call("WorkerDone", worker_request(self.worker), timeout=FAREWELL_TIMEOUT_S)
            except PsflowError as exc:
                log.warning("parameter server %d did not take this worker's farewell (%s); "
                            "finishing anyway", client.index, exc)
                silent.append(client.index)
        return silent

    def close(self):
        self.fanout.close()
        for client in self.clients:
            client.close()


def _land(places, reply, versions):
    """Copies a PullRows reply's rows where `places` says: (array, lo, hi, part) for a part's
    rows, (array, positions, None, table) for a table's keys."""
    for (out, lo, hi, part), item in zip(places, reply.values):
        if hi is None:
            out[lo] = item.array
        else:
            out[lo:hi] = item.array
            versions[part.name] = item.version


def _table_spec(table):
    spec = table.spec()
    initializer = dict(spec["initializer"])
    kind = initializer.pop("kind")
    return pb.TableSpec(name=spec["name"], dim=spec["dim"], dtype=spec["dtype"],
                        initializer=kind,
                        initializer_params={k: float(v) for k, v in initializer.items()},
                        filter_freq=spec["filter_freq"],
                        steps_to_live=spec["steps_to_live"] or 0)


def _values_of(replies):
    """{part name: (array, version)} of the values replies carry (proto.wire.NamedValue)."""
    return {item.name: (item.array, item.version) for reply in replies for item in reply.values}


def _split_gradient(grad, var, placement, dedup):
    """Yields (part, values, indices or None) for each part of `var` the gradient touches.
    A sparse gradient travels as one row per distinct id, its rows summed (`dedup(ids)`
    gives the ids' Dedup)."""
    parts = placement.parts_of(var)
    if isinstance(grad, IndexedSlices):
        ids = np.asarray(grad.indices)
        found = dedup(ids)
        values = np.asarray(grad.values).reshape((ids.size,) + tuple(var.shape[1:]))
        indices, values = found.unique, found.sum_rows(values)
        if len(parts) == 1:
            yield parts[0], values, indices
            return
        # the distinct ids are sorted: each part's are one slice
        bounds = np.searchsorted(indices, [p.start for p in parts] + [parts[-1].stop])
        for part, lo, hi in zip(parts, bounds[:-1], bounds[1:]):
            if hi > lo:
                yield part, values[lo:hi], indices[lo:hi] - part.start
        return
    grad = np.asarray(grad)
    if grad.shape != tuple(var.shape):
        raise InvalidArgumentError(f"gradient of shape {grad.shape} does not match variable "
                                   f"{var.name!r} of shape {tuple(var.shape)}")
    if len(parts) == 1:
        yield parts[0], grad, None
        return
    for part in parts:
        yield part, grad[part.start:part.stop], None
