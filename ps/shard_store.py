"""One parameter-server shard as a plain object: arrays in, arrays out (no gRPC and no wire
format here; the servicer translates). It composes the shard's parts: dense variables
(dense_variables), embedding tables (tables), the checks of pushed gradients
(gradient_checks), sync and ssp steps (sync), repeated pushes (push_dedup), checkpoint
snapshots (snapshots), counters (stats) and worker membership (membership).

Staleness: each gradient's staleness is the variable's version when the gradient arrives minus
the version it was computed from (PushResponse.staleness). The histogram counts gradients by
staleness; for a push that advances the global step it records, per gradient, the global steps
that passed since the worker's pull instead (the proto's PushRequest.global_step).
"""

import collections
import threading
import time

from psflow.errors import FailedPreconditionError
from .dense_variables import DenseVariables
from .gradient_checks import check_gradients
from .input_positions import InputPositions
from .membership import Membership
from .push_dedup import PushDedup
from .rule_cache import RuleCache
from .snapshots import ShardSnapshots
from .stats import ShardCounters
from .sync import SyncState
from .tables import ShardTables

# The answer to a push: each gradient's staleness, the global step after it (-1 on shards
# that do not hold it), whether it was dropped (sync: too late), and the step decision it took
# part in (sync, shard 0: (step, workers)) or None.
PushResult = collections.namedtuple("PushResult", "staleness global_step dropped decision")


class ShardStore:
    """Variables, optimizer slots, embedding tables, the global step (held by shard 0),
    counters and worker membership of one shard. Every method is safe to call from many
    threads."""

    def __init__(self, shard=0, num_workers=1, allow_nonfinite=False, checkpoint_root=None):
        """`allow_nonfinite`: apply gradients holding NaN or Inf instead of refusing them.
        `checkpoint_root`: the folder that `save` may write in (below it, anywhere), or
        several separated by os.pathsep; without one the shard writes no checkpoint."""
        self.shard = shard
        self.num_workers = num_workers
        self.allow_nonfinite = allow_nonfinite
        self.members = Membership(num_workers)
        self.counters = ShardCounters()
        registry_lock = threading.Lock()  # one namespace: a name is a variable or a table
        self.variables = DenseVariables(shard, registry_lock, self.counters)
        self.tables = ShardTables(shard, registry_lock, self.counters)
        self.snapshots = ShardSnapshots(shard, checkpoint_root, self.counters)
        self._rules = RuleCache()
        self._push_ids = PushDedup()
        self._step_lock = threading.Lock()
        self.global_step = 0
        self.sync = SyncState(self)
        # Shard 0: how far the applied pushes consumed the job's followed datasets.
        self.input_positions = InputPositions()

    @property
    def checkpoint_root(self):
        """The folder(s) `save` may write in (os.pathsep between them), or None."""
        return self.snapshots.root

    @property
    def holds_global_step(self):
        return self.shard == 0

    @property
    def all_done(self):
        """An Event set once every worker has reported done."""
        return self.members.all_done

    def reported_global_step(self):
        """The global step as replies carry it: -1 on shards that do not hold it."""
        return self.global_step if self.holds_global_step else -1

    def set_global_step(self, step):
        with self._step_lock:
            self.global_step = int(step)

    # -- declaring, initializing, restoring ------------------------------------------------
    def declare(self, specs):
        """Declares variables (see DenseVariables.declare); returns those with values."""
        return self.variables.declare(specs)

    def declare_tables(self, specs):
        """Declares embedding tables (see ShardTables.declare)."""
        self.tables.declare(specs, self.variables.held)

    def initialize(self, values, overwrite=False):
        """Sets values of declared variables (see DenseVariables.initialize)."""
        return self.variables.initialize(values, overwrite)

    def restore_slots(self, slots, global_step=None):
        """Sets optimizer slots {(variable, rule, slot): array} (replacing a variable's slots
        for that rule) and, with `global_step`, the global step: a checkpoint's state, set
        before its values so nobody trains on values without their slots."""
        self.variables.restore_slots(slots)
        if global_step is not None:
            if self.holds_global_step:
                self.set_global_step(global_step)
            self.sync.reset(global_step)
            self._push_ids.clear()  # the pushes they name changed a state that is gone

    def load_table(self, name, fields):
        """Adds a checkpoint's rows (fields as EmbeddingTable.state gives them) to a table."""
        self.tables.load(name, fields)

    def push_answers(self):
        """[((worker, push id), PushResult)] of the pushes remembered (see push_dedup)."""
        return self._push_ids.answers()

    def remember_push_answers(self, answers):
        """Remembers [(worker, push id, staleness, global step, dropped)] as pushes recorded
        (a sync push's decision is its step's, found again when it is repeated)."""
        self._push_ids.remember([((worker, push_id),
                                  PushResult(staleness, step, dropped, None))
                                 for worker, push_id, staleness, step, dropped in answers])

    def save(self, path):
        """Writes the shard's snapshot to the shard file `path` (see ShardSnapshots.save)."""
        return self.snapshots.save(
            path, self.variables, self.tables,
            lambda: self.global_step if self.holds_global_step else None)

    def save_with_positions(self, path):
        """As `save`, with the input positions (shard 0; else []) read just before the
        snapshot, so a push applied meanwhile has its data read again after a restore rather
        than skipped: (sha256, global step or None, bytes, variable names, positions)."""
        positions = self.input_positions.all() if self.holds_global_step else []
        return (*self.save(path), positions)

    def save_incremental(self, path, since_seq=0, since_incarnation=0, evict=True):
        """As `save_with_positions`, a delta of the tables when it can (see
        ShardSnapshots.save_incremental): (sha256, global step or None, bytes, variable
        names, positions, (delta, table sequence, incarnation))."""
        positions = self.input_positions.all() if self.holds_global_step else []
        *saved, chain = self.snapshots.save_incremental(
            path, self.variables, self.tables,
            lambda: self.global_step if self.holds_global_step else None,
            since_seq, since_incarnation, evict)
        return (*saved, positions, chain)

    def missing(self, names):
        """The names among `names` that have no value yet (NotFoundError if one is unknown)."""
        return self.variables.missing(names)

    def wait_initialized(self, names, timeout, is_active=None):
        """Blocks until the named variables have values (see DenseVariables)."""
        return self.variables.wait_initialized(names, timeout, is_active)

    def wake_waiters(self):
        self.variables.wake_waiters()

    def close(self):
        """Ends every current and future wait_initialized at once (the server is stopping)."""
        self.variables.close()

    # -- reading ---------------------------------------------------------------------------
    def with_values(self, names, use, share=False):
        """use([(name, version, array)]) for the named variables (see DenseVariables)."""
        return self.variables.with_values(names, use, share)

    def with_rows(self, selections, use):
        """use([(name, version, rows)]) for [(name, row indices)] (see DenseVariables)."""
        return self.variables.with_rows(selections, use)

    def lookup_keys(self, selections, global_step=0):
        """[(name, version, rows)] for [(table, keys, counts or None, train)] (ShardTables)."""
        return self.tables.lookup_keys(selections, global_step)

    def evict_tables(self, global_step=None):
        """Evicts the stale rows of every table with steps_to_live; returns how many."""
        return self.tables.evict(global_step)

    def pull_header(self, commit=None):
        """What a pull answers besides the values: (global step or -1, the last step decision
        (step, workers) on shard 0, else None). A `commit` (step, workers) decided by shard 0
        is applied first on the other shards (see psflow.ps.sync)."""
        if commit is not None and not self.holds_global_step:
            self.sync.commit(*commit)
        decision = self.sync.decision() if self.holds_global_step else None
        return self.reported_global_step(), decision

    # -- pushing ---------------------------------------------------------------------------
    def rule(self, name, hyper):
        """The UpdateRule for a spec, made once and reused (see RuleCache)."""
        return self._rules.rule(name, hyper)

    def push_step(self, gradients, rule, consistency, worker=-1, global_step=0,
                  increment_global_step=False, push_id=None, returns=(),
                  input_positions=(), wait=True):
        """A worker's push in any mode (a psflow.train.consistency.Consistency as it runs):
        async applies it now; sync holds it for the step's decision (shard 0 waits for the
        decision); ssp applies it and, on shard 0, waits at the staleness bound. `returns`
        names variables whose values the caller will read afterwards: they are checked to be
        initialized before anything is applied. `push_id`, a hashable, makes a repeated push
        get the first one's answer instead of being applied again (see push_dedup).
        `input_positions` [(dataset, shard, num_shards, file, lines)]: how far the data the
        pushing worker trained on goes, recorded once the push is applied. `wait` False (a
        shard run as a chain of replicas) records a sync or ssp push without waiting: shard
        0's head waits afterwards (see psflow.ps.sync_chain). Returns a PushResult."""
        not_ready = self.missing(returns)
        if not_ready:
            raise FailedPreconditionError(f"cannot return {not_ready[0]!r} with the push: it "
                                          "is not initialized yet")

        def step():
            result = self._push_step(gradients, rule, consistency, worker, global_step,
                                     increment_global_step, wait)
            if input_positions:
                self.input_positions.record(input_positions)
            return result
        return step() if push_id is None else self._push_ids.once(worker, push_id, step)

    def _push_step(self, gradients, rule, consistency, worker, global_step,
                   increment_global_step, wait):
        if consistency.mode == "sync":
            self.tables.note_step(global_step)
            checked, received = self.check_gradients(gradients)
            dropped, decision = self.sync.push(worker, global_step, checked, rule, received,
                                               consistency.replicas_to_aggregate, wait)
            return PushResult([], self.reported_global_step(), dropped, decision)
        staleness, step = self.push(gradients, rule, worker=worker,
                                    increment_global_step=increment_global_step,
                                    global_step=global_step)
        if consistency.mode == "ssp" and self.holds_global_step:
            if wait:
                self.sync.ssp_barrier(worker, consistency.staleness)
            else:
                self.sync.ssp_count(worker)
            step = self.global_step
        return PushResult(staleness, step if self.holds_global_step else -1, False, None)

    def push(self, gradients, rule, worker=-1, increment_global_step=False, global_step=None):
        """Applies gradients, a list of (name, values, indices or None, version), with `rule`
        (an UpdateRule, see `rule()`) now, whatever the mode. Every gradient is checked
        before any is applied. With `increment_global_step` the global step then advances
        by one. `global_step` is the step the worker pulled (for the staleness histogram).
        Returns (the staleness of each gradient, the global step after the push)."""
        self.tables.note_step(global_step)
        checked, received = self.check_gradients(gradients)
        staleness = self.apply(checked, rule)
        if increment_global_step:
            with self._step_lock:
                before = self.global_step
                self.global_step += 1
                step = self.global_step
            if global_step is not None:
                recorded = [max(before - global_step, 0)] * len(staleness)
            else:
                recorded = staleness
        else:
            step = self.global_step
            recorded = staleness
        self.count_push(worker, received, recorded)
        return staleness, step

    def check_gradients(self, gradients):
        """([(variable or table, gradient, version)], bytes received) of checked gradients
        (see gradient_checks.check_gradients)."""
        return check_gradients(gradients, self.variables, self.tables, self.allow_nonfinite,
                               self.counters)

    def apply(self, checked, rule):
        """Applies [(variable or table, gradient, version)] with `rule`, each under its own
        lock; returns each gradient's staleness."""
        started = time.perf_counter()
        step = self.tables.step
        staleness = [held.apply(rule, grad, version, step) for held, grad, version in checked]
        self.counters.count_apply(time.perf_counter() - started)
        return staleness

    def count_push(self, worker, received, staleness):
        self.counters.count_push(received, staleness)
        self.members.touch(worker, pushed=True)

    # -- membership ------------------------------------------------------------------------
    def register(self, index):
        """Worker `index` has started. Returns (number of workers, how many are done)."""
        membership = self.members.register(index)
        self.sync.on_register(index)
        return membership

    def heartbeat(self, index, local_step, loss, activity="", examples=0):
        """Worker `index` is alive at its `local_step` with `loss`, having trained on
        `examples`. Returns membership."""
        return self.members.heartbeat(index, local_step, loss, activity, examples)

    def done(self, index):
        """Worker `index` has finished (idempotent). Returns membership."""
        membership = self.members.done(index)
        self.sync.wake()  # steps waiting for this worker go on without it
        return membership

    # -- stats -----------------------------------------------------------------------------
    def stats(self):
        """Counters as a dict: the fields of the proto's StatsResponse; `workers` holds
        (task_index, registered, done, local_step, loss, last_seen_s, pushes, activity,
        examples) tuples."""
        return self.counters.stats(
            shard=self.shard, global_step=self.reported_global_step(),
            workers=self.members.rows(), variables=len(self.variables),
            variable_bytes=self.variables.nbytes(), dropped=self.sync.dropped,
            sync_steps=self.sync.steps)

    def variable_stats(self):
        """[(name, rows, bytes, gradients received, pulls answered)] of every variable."""
        return self.variables.stats()

    def table_stats(self):
        """{table name: {"rows", "bytes", "created", "filtered", "evicted",
        "dropped_gradients"}}."""
        return self.tables.stats()

    def table_counters(self):
        """{table name: (gradients received, pulls answered)}."""
        return self.tables.counters_by_table()

    def timings(self):
        """(apply-time bucket counts, their seconds, checkpoints written, their seconds,
        (seconds, bytes) of the last) (see ShardCounters.timings)."""
        return self.counters.timings()
