"""What a DistributedStore pulls for a run: the variables its fetches need, from all owning
shards at once (`prefetch`), and the distinct rows its lookups touch (`read_rows`), those of
fed ids in the same calls, before the run. In sync mode shard 0 is asked first for the last
step decided, which the pull hands to the other shards (a commit), so every shard applies
the same step before it answers (see psflow.ps.sync)."""

import time

import numpy as np

from psflow.key_index import array_key
from psflow.local_store import check_rows
from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb
from .payload_batches import batches
from .placement import keys_by_shard


class Pulls:
    """DistributedStore's pulls; they use the store's `clients`, `fanout`, `placement`,
    `step`, `global_step_var` and `consistency`, and set `last_global_step` and `activity`."""

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
        looked_up = {p.shard for var in lookups if not var.is_table
                     for p in self.placement.parts_of(var)}
        if any(var.is_table for var in lookups):
            looked_up.update(range(len(self.clients)))  # keys may hash to any shard
        if (consistency or self.consistency).synchronous and \
                any(s != 0 for s in set(wanted) | looked_up):
            # The other shards may not have applied the last step yet: learn it from shard 0
            # and have them apply it first, so the values are never a mix of two steps.
            first = self._pull_calls({0: wanted.pop(0, [])})
            for reply in self.fanout.call(first):
                step.global_step = self.last_global_step = reply.global_step
                _take_values(reply.values, pieces, step.versions)
                commit = reply.decision
            if commit.step < 0:
                commit = None
        step.commit = commit  # for the rows that lookups pull during the run
        calls = self._pull_calls(wanted, commit)
        row_calls, landing = self._row_calls(rows, commit, train)
        replies = self.fanout.call(calls + row_calls)
        # `replies` goes on with the row calls' replies
        for (client, _, _), reply in zip(calls, replies, strict=False):
            if client.index == 0:
                step.global_step = self.last_global_step = reply.global_step
            _take_values(reply.values, pieces, step.versions)
        for places, reply in zip(landing, replies[len(calls):], strict=True):
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
            for batch in batches(parts, lambda p: p.nbytes) if parts else [[]]:
                request = pb.PullRequest(names=[p.name for p in batch])
                if commit is not None and shard != 0:
                    request.commit.CopyFrom(commit)
                calls.append((client, "Pull", request))
        return calls

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
            if var.is_table:
                self._key_selections(var, ids, keyed)
                continue
            check_rows(var, ids, var.shape[0])
            dedup = self.dedup(ids)
            unique = dedup.unique
            out = np.empty((unique.size,) + tuple(var.shape[1:]), dtype=var.dtype)
            step.rows[key] = (ids, out)
            parts = self.placement.parts_of(var)
            bounds = np.searchsorted(unique, self.placement.bounds[var]).tolist()
            for part, lo, hi in zip(parts, bounds[:-1], bounds[1:], strict=True):
                if hi > lo:
                    by_shard.setdefault(part.shard, []).append((out, lo, hi, part, unique))
        calls, landing = [], []
        for shard in sorted(set(by_shard) | set(keyed)):
            selected = by_shard.get(shard, [])
            request = pb.PullRowsRequest(global_step=step.global_step)
            for _, lo, hi, part, unique in selected:
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
        for shard, positions in keys_by_shard(keys, len(self.clients)):
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
            for places, reply in zip(landing, self.fanout.call(calls), strict=True):
                _land(places, reply, step.versions)
            pulled = step.rows[(var, array_key(indices))]
            step.pulling += time.perf_counter() - started
        rows = pulled[1]
        return rows[self.dedup(indices).inverse].reshape(indices.shape + tuple(var.shape[1:]))


def _take_values(items, pieces, versions):
    for item in items:  # proto.wire.NamedValue: the array is read already
        pieces[item.name] = item.array
        versions[item.name] = item.version


def _land(places, reply, versions):
    """Copies a PullRows reply's rows where `places` says: (array, lo, hi, part) for a part's
    rows, (array, positions, None, table) for a table's keys."""
    for (out, lo, hi, part), item in zip(places, reply.values, strict=False):
        if hi is None:
            out[lo] = item.array
        else:
            out[lo:hi] = item.array
            versions[part.name] = item.version
