"""The distributed session: the graph runs in this worker, its Variables live on the
parameter servers (see psflow.worker.distributed_store).

The chief (worker 0) initializes the variables, or restores them from a checkpoint; the
others wait for it by notification. A parameter server that restarts without its variables
is restored from the latest checkpoint and the step runs again.
"""

import logging
import math
import signal
import threading
import time

import numpy as np

from psflow import settings
from psflow.data import stream_state
from psflow.errors import FailedPreconditionError, NotFoundError, PsflowError, UnavailableError
from psflow.local_store import LocalVariableStore
from psflow.parent import exit_with_parent
from psflow.proto import psflow_pb2 as pb
from psflow.session import Session, at_exit
from psflow.state_ops import variables_initializer
from psflow.train import consistency as modes
from psflow.train import saver
from psflow.train.optimizers import ApplyGradients
from .curves import JobCurves
from .distributed_store import DistributedStore
from .placement import PARTITION_BYTES
from .step_times import StepTimes, batch_size
from .worker_exporter import watch

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
# How long the chief's final checkpoint of a followed stream waits for the other workers to end,
# and how often it looks.
OTHERS_TIMEOUT_S = 120.0
OTHERS_POLL_S = 0.1
# How long a worker waits for a parameter server that went away to come back.
RECOVERY_TIMEOUT_S = settings.RECOVERY_TIMEOUT.get()


def job_consistency(graph):
    """The mode of the job's training: the one its train ops name (SyncReplicasOptimizer and
    friends), else the one `launch --mode` chose, else async."""
    named = {node.consistency for node in graph.nodes
             if isinstance(node, ApplyGradients) and node.consistency is not None}
    if len(named) > 1:
        raise ValueError("the graph's train ops ask for different training modes: " +
                         ", ".join(sorted(str(tuple(c)) for c in named)))
    return named.pop() if named else modes.from_env()


class DistributedSession(Session):
    """A Session whose Variables live on the parameter servers named in the task config."""

    def __init__(self, graph, task, partition_bytes=PARTITION_BYTES, restore=None,
                 checkpoint_dir=None, initializer=None, summary_dir=None):
        """`restore`: (global step, {Variable: value}, {(Variable, rule, slot): value}) from a
        checkpoint, which the chief sets on the shards instead of the initial values.
        `checkpoint_dir`: where the chief finds the latest checkpoint when a parameter server
        restarts without its variables. `initializer`: (an op, its feed dict) that sets the
        initial values in place of the variables' own initializers (Scaffold.init_op).
        `summary_dir`: where the chief writes the job's curves for TensorBoard (see
        psflow.worker.curves). `initialized_here` tells whether this session gave the
        variables fresh values."""
        self.consistency = job_consistency(graph)
        store = DistributedStore(graph, task, partition_bytes, self.consistency)
        self.checkpoint_dir = checkpoint_dir
        super().__init__(graph=graph, store=store)
        self.task = task
        self.local_step = 0
        self.last_loss = math.nan
        self.step_times = StepTimes()
        self._modes = {}  # plan -> (whether its runs apply gradients, their mode)
        self._stopping = threading.Event()
        store.register()
        if task.is_chief and checkpoint_dir:
            store.check_checkpoint_dir(checkpoint_dir)  # now, not at the first save
        initialized = store.declare()
        self.initialized_here = False
        if task.is_chief:
            self._initialize(graph, initialized, restore, initializer)
        else:
            store.wait_initialized()
        store.resume_input_positions()
        if settings.ONLINE.get():
            _stop_on_sigterm()
        store.activity = "in the script's own code before its first run"
        self._heartbeat = threading.Thread(target=self._beat, name="psflow-heartbeat",
                                           daemon=True)
        self._heartbeat.start()
        self._curves = JobCurves.started(store.clients, summary_dir) \
            if task.is_chief and summary_dir else None
        watch(self)
        exit_with_parent()

    def _initialize(self, graph, initialized, restore=None, initializer=None):
        """The chief computes the initial values locally and sends those the shards lack, or
        sets every variable from `restore` (a checkpoint) when any is lacking."""
        store = self.store
        missing = [v for v in store.variables
                   if any(p.name not in initialized for p in store.placement.parts_of(v))]
        if not missing:
            log.info("variables already initialized on the parameter servers; keeping them")
            return
        if restore is not None:
            store.restore(restore, shards=None)
            log.info("restored %d variables at global step %d on %d parameter servers",
                     len(restore[1]), restore[0], len(store.clients))
            return
        if len(missing) < len(store.variables):
            # Some shards have trained values and some have none: one restarted and lost
            # them. Fresh initial values there would make a model of two different ones.
            lost = sorted({p.shard for v in missing for p in store.placement.parts_of(v)
                           if p.name not in initialized})
            raise _lost_for_good(_shard_names(store, lost))
        local = Session(graph=graph, store=LocalVariableStore())
        with graph.as_default():
            local.run(variables_initializer(missing))
        op, feeds = initializer or (None, None)
        if op is not None:
            local.run(op, feeds)
        store.initialize({v: local.store.read(v) for v in missing})
        self.initialized_here = True
        log.info("initialized %d variables on %d parameter servers", len(missing),
                 len(store.clients))

    def _execute(self, plan, feeds):
        self.store.begin_run()
        return self.with_recovery(self._execute_once, plan, feeds)

    def with_recovery(self, fn, *args):
        """fn(*args); if a parameter server turns out to have restarted, once it is back with
        its variables (restored or waited for), fn is called once more."""
        try:
            return fn(*args)
        except (UnavailableError, NotFoundError, FailedPreconditionError) as exc:
            if not self._recover(exc):
                raise
        return fn(*args)

    def _recover(self, error):
        """Brings restarted shards back; False if none had restarted (`error` stands)."""
        store = self.store
        log.warning("%s; checking the parameter servers", error)
        lost = store.lost_shards(RECOVERY_TIMEOUT_S)
        if not lost:
            # A shard that restarted may have been restored by the chief between the failed
            # call and this look: every variable is back, so the run is tried once more (a
            # failure that has nothing to do with a restart fails again, and stands).
            return isinstance(error, (UnavailableError, FailedPreconditionError, NotFoundError))
        names = _shard_names(store, lost)
        if not self.task.is_chief:
            log.warning("parameter server(s) %s restarted; waiting for the chief to restore "
                        "them", names)
            store.wait_initialized(shards=lost)
            return True
        state = saver.latest_state(self.checkpoint_dir, store.variables) \
            if self.checkpoint_dir else None
        if state is None:
            raise _lost_for_good(names) from error
        if self.consistency.mode != "async":
            # Steps are in lockstep on every shard: all of them go back to the checkpoint,
            # so the model is never a mix of two steps.
            lost = list(range(len(store.clients)))
        store.restore(state, shards=lost)
        log.warning("restored parameter server(s) %s from the checkpoint at global step %d",
                    names, state[0])
        return True

    def _execute_once(self, plan, feeds):
        mode = self._modes.get(plan)
        if mode is None:
            applies = [node for node, _, _ in plan.steps if isinstance(node, ApplyGradients)]
            named = [n.consistency for n in applies if n.consistency is not None]
            mode = self._modes[plan] = (bool(applies), named[0] if named else self.consistency)
        trains, consistency = mode
        store = self.store
        started = time.perf_counter()
        store.prefetch(plan.variables, reuse=trains, consistency=consistency,
                       lookups=plan.lookups,
                       rows=[(var, feeds[ids]) for var, ids in
                             plan.fed_lookups + plan.computed_lookups],
                       train=trains)
        store.activity = f"run {store.step.run}: computing"
        pulled = time.perf_counter()
        values = super()._execute(plan, feeds)
        step = store.step
        ran = time.perf_counter() - pulled
        self.step_times.record(pulled - started + step.pulling,
                               max(ran - step.pulling - step.pushing, 0.0), step.pushing,
                               batch_size(feeds) if trains else 0)
        self.local_step += 1
        store.activity = f"in the script's own code after run {store.step.run}"
        for node, _, _ in plan.steps:
            if isinstance(node, ApplyGradients) and node.loss is not None:
                loss = values.get(node.loss)
                if loss is not None and np.size(loss) == 1:
                    self.last_loss = float(loss)
        return values

    def _beat(self):
        while not self._stopping.wait(HEARTBEAT_S):
            self.step_times.sample()
            try:
                self.store.heartbeat(self.local_step, self.last_loss,
                                     self.step_times.examples)
            except Exception as exc:  # a missed beat is not fatal; the next one may pass
                log.debug("heartbeat failed: %s", exc)

    def save_checkpoint(self, checkpoint_dir, variables, global_step, max_to_keep=5,
                        full_every=None):
        """As Session.save_checkpoint; a parameter server that restarted meanwhile is
        restored first and the save is tried once more."""
        return self.with_recovery(super().save_checkpoint, checkpoint_dir, variables,
                                  global_step, max_to_keep, full_every)

    def await_other_workers(self, timeout=OTHERS_TIMEOUT_S):
        """Waits (up to `timeout` seconds) until every other worker that is running has
        reported done or left, so that the chief's final checkpoint of a followed stream holds
        their last steps and input positions. Returns whether they all did."""
        deadline = time.monotonic() + timeout
        dead_after = settings.DEAD_AFTER.get()
        while True:
            try:
                stats = self.store.clients[0].call("GetStats", pb.StatsRequest(), timeout=5.0)
            except PsflowError as exc:
                log.warning("cannot ask parameter server 0 about the other workers (%s); "
                            "writing the final checkpoint now", exc)
                return False
            running = [w.task_index for w in stats.workers
                       if w.task_index != self.task.worker_index and w.registered
                       and not w.done and w.last_seen_s <= dead_after]
            if not running:
                return True
            if time.monotonic() >= deadline:
                log.warning("workers %s still running after %.0f s; writing the final "
                            "checkpoint without their last steps", running, timeout)
                return False
            time.sleep(OTHERS_POLL_S)

    def finish(self, done=True):
        """Stops the heartbeat; reports this worker done to every shard if `done`."""
        if self._closed:
            return
        self._stopping.set()
        try:
            if self._curves is not None:
                self._curves.stop()  # its last look, while every shard still answers
            if done:
                self.store.done()
        finally:
            self.store.close()
            super().close()

    def close(self):
        self.finish(done=True)

    def __exit__(self, exc_type, exc, tb):
        self._default_context.__exit__(exc_type, exc, tb)
        self.finish(done=exc_type is None)
        return False

    def finish_at_exit(self):
        """For a session the script may never close (`tf.Session(server.target)`): when the
        process exits, it finishes, reporting this worker done unless an exception ended the
        script."""
        at_exit(lambda failed: self.finish(done=not failed))


def _stop_on_sigterm():
    """Online training: SIGTERM (the launcher's or Kubernetes' stop) ends the followed
    datasets and the training loop, so the session closes normally (the chief writing its
    final checkpoint); a second SIGTERM ends the process at once."""
    if threading.current_thread() is not threading.main_thread():
        return

    def on_sigterm(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        log.info("got SIGTERM: stopping after the current step")
        stream_state.request_stop()
    signal.signal(signal.SIGTERM, on_sigterm)


def _shard_names(store, shards):
    """`0 (host:port), 2 (host:port)`: the parameter servers `shards`, for messages."""
    return ", ".join(f"{i} ({store.clients[i].address})" for i in shards)


def _lost_for_good(names):
    """The error of shards (`names`) that lost their variables with no checkpoint to give
    them back."""
    return FailedPreconditionError(
        f"parameter server(s) {names} restarted and lost their variables, and there is no "
        "checkpoint to restore them from (give MonitoredTrainingSession a checkpoint_dir to "
        "survive this)")
