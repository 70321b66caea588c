"""`MonitoredTrainingSession` and session-run hooks, as in TensorFlow 1.x.

With a cluster in `TF_CONFIG` the session is distributed: Variables live on the parameter
servers and the chief (worker 0) initializes them while the others wait for it by
notification. Without one, the same script trains locally in one process.
"""

import collections
import logging
import os
import time

from .. import checkpoint as files
from .. import session as session_lib
from .. import settings, summary
from ..data import stream_state
from ..errors import OutOfRangeError
from ..graph import Placeholder, get_default_graph, topological_order
from ..session import Session
from ..state_ops import global_variables_initializer
from ..variables import local_variables_initializer
from . import saver
from .cluster import task_config_from_env
from .export_hook import ServableExportHook
from .optimizers import get_global_step, get_or_create_global_step
from .server import task_for_target
from .session_run_hook import SessionRunHook

log = logging.getLogger(__name__)

SessionRunArgs = collections.namedtuple("SessionRunArgs", ["fetches", "feed_dict"],
                                        defaults=(None,))
SessionRunValues = collections.namedtuple("SessionRunValues", ["results"])


class SessionRunContext:
    """What a hook sees of a run: the caller's arguments, the session, and a way to stop."""

    def __init__(self, original_args, session):
        self.original_args = original_args
        self.session = session
        self.stop_requested = False

    def request_stop(self):
        self.stop_requested = True


class StopAtStepHook(SessionRunHook):
    """Requests a stop once the global step reaches `last_step` (or `num_steps` more steps
    than when the session started)."""

    def __init__(self, num_steps=None, last_step=None):
        if (num_steps is None) == (last_step is None):
            raise ValueError("StopAtStepHook needs exactly one of num_steps and last_step")
        if (num_steps if num_steps is not None else last_step) < 0:
            raise ValueError("StopAtStepHook: the number of steps must not be negative")
        self._num_steps, self._last_step = num_steps, last_step
        self._global_step = None

    def begin(self):
        self._global_step = get_global_step()
        if self._global_step is None:
            raise RuntimeError("StopAtStepHook needs a global step; create one with "
                               "psflow.train.get_or_create_global_step()")

    def after_create_session(self, session, coord):
        step = int(session.run(self._global_step))
        if self._last_step is None:
            self._last_step = step + self._num_steps
        if step >= self._last_step and coord is not None:
            coord.request_stop()  # a resumed job that is already done trains no more

    def before_run(self, run_context):
        return SessionRunArgs(self._global_step)

    def after_run(self, run_context, run_values):
        if int(run_values.results) >= self._last_step:
            run_context.request_stop()

    @property
    def last_step(self):
        return self._last_step


class CheckpointSaverHook(SessionRunHook):
    """Saves checkpoints to `checkpoint_dir` every `save_secs` seconds or `save_steps`
    global steps and at the end, keeping the last `max_to_keep`; at the end it also exports
    the model file (`model.npz`, see psflow.load_model). Each of `listeners` has its
    `after_save(session, checkpoint directory)` called after every checkpoint; one in
    `full_every` holds every table row (see MonitoredTrainingSession)."""

    def __init__(self, checkpoint_dir, save_secs=None, save_steps=None, max_to_keep=5,
                 listeners=(), full_every=None):
        if save_secs is not None and save_steps is not None:
            raise ValueError("give save_secs or save_steps, not both")
        self.checkpoint_dir = checkpoint_dir
        self.max_to_keep = max_to_keep
        self.full_every = full_every
        self._saver = None
        self._save_secs, self._save_steps = save_secs, save_steps
        self.listeners = list(listeners)

    def begin(self):
        self._global_step = get_global_step()
        self._graph = get_default_graph()

    def after_create_session(self, session, coord):
        step_var = self._global_step
        self._variables = [v for v in self._graph.variables if v is not step_var]

        def save():
            path = session.save_checkpoint(self.checkpoint_dir, self._variables, step_var,
                                           self.max_to_keep, self.full_every)
            for listener in self.listeners:
                listener.after_save(session, path)
            return path
        self._saver = saver.CheckpointSaver(save, self._save_secs, self._save_steps)

    def before_run(self, run_context):
        return SessionRunArgs(self._global_step)

    def after_run(self, run_context, run_values):
        self._saver.after_step(int(run_values.results))

    def end(self, session):
        path = self._saver.save()
        # The model file is the final checkpoint's values: other workers may still push
        # after it was taken, and the two must agree.
        files.export_model(os.path.join(self.checkpoint_dir, files.MODEL_FILE),
                           files.model_arrays(path))
        log.info("saved %s and the model file", path)


class SummarySaverHook(SessionRunHook):
    """Writes `summary_op`'s value (default: every summary of the graph, merged) to a
    TensorBoard event file in `output_dir` every `save_steps` global steps or `save_secs`
    seconds, at the global step of the run that computed it."""

    def __init__(self, save_steps=None, save_secs=None, output_dir=None, summary_writer=None,
                 scaffold=None, summary_op=None):
        if (save_steps is None) == (save_secs is None):
            raise ValueError("SummarySaverHook needs exactly one of save_steps and save_secs")
        if output_dir is None and summary_writer is None:
            raise ValueError("SummarySaverHook needs output_dir or summary_writer")
        self._save_steps, self._save_secs = save_steps, save_secs
        self._output_dir, self._writer = output_dir, summary_writer
        self._scaffold, self._summary_op = scaffold, summary_op
        self._next_step = None
        self._last_time = None
        self._needs = None

    def begin(self):
        if self._summary_op is None and self._scaffold is not None:
            self._summary_op = self._scaffold.summary_op
        if self._summary_op is None:
            self._summary_op = summary.merge_all()
        self._global_step = get_global_step()

    def _due(self):
        if self._next_step is None:  # the first run writes
            return True
        if self._save_steps is not None:
            return self._last_step >= self._next_step
        return time.monotonic() - self._last_time >= self._save_secs

    def _fed(self, run_context):
        """Whether the run feeds every placeholder the summaries need (a run that only
        reads the global step, say, does not: the summaries wait for the next run)."""
        if self._needs is None:
            self._needs = [n for n in topological_order([self._summary_op])
                           if isinstance(n, Placeholder)]
        feeds = run_context.original_args.feed_dict or {}
        return all(node in feeds for node in self._needs)

    def before_run(self, run_context):
        self._request = self._summary_op is not None and self._due() and \
            self._fed(run_context)
        fetches = {"step": self._global_step}
        if self._request:
            fetches["summary"] = self._summary_op
        return SessionRunArgs(fetches)

    def after_run(self, run_context, run_values):
        step = int(run_values.results["step"])
        self._last_step = step
        if self._request:
            if self._writer is None:
                self._writer = summary.FileWriterCache.get(self._output_dir)
            self._writer.add_summary(run_values.results["summary"], step)
            self._next_step = step + (self._save_steps or 0)
            self._last_time = time.monotonic()

    def end(self, session):
        if self._writer is not None:
            self._writer.flush()


class Scaffold:
    """What a MonitoredTrainingSession needs to initialize a model, as in TensorFlow 1.x:
    `init_op` (with `init_feed_dict`) sets the variables' initial values instead of
    global_variables_initializer(); `init_fn(scaffold, session)` runs after it, on the chief,
    when the model starts fresh (not when it resumes from a checkpoint); `local_init_op`
    (with `local_init_feed_dict`) runs on every worker once its session is ready; without
    one, the local variables (metrics' counts) are initialized.

    `summary_op` is what the chief writes to `summary_dir` (default: every summary, merged).
    psflow's sessions are ready once the chief has initialized or restored the variables, and
    the chief saves checkpoints itself, so `ready_op`, `ready_for_local_init_op` and `saver`
    are accepted and change nothing; `copy_from_scaffold` is refused."""

    def __init__(self, init_op=None, init_feed_dict=None, init_fn=None, ready_op=None,
                 ready_for_local_init_op=None, local_init_op=None, summary_op=None,
                 saver=None, copy_from_scaffold=None, local_init_feed_dict=None):
        if copy_from_scaffold is not None:
            raise NotImplementedError("Scaffold(copy_from_scaffold=...) is not supported")
        self.summary_op = summary_op
        self.saver = saver
        if init_fn is not None and not callable(init_fn):
            raise TypeError(f"Scaffold: init_fn must be callable, got {init_fn!r}")
        self.init_op = init_op
        self.init_feed_dict = init_feed_dict
        self.init_fn = init_fn
        self.local_init_op = local_init_op
        self.local_init_feed_dict = local_init_feed_dict

    def finalize(self):
        """TF1 freezes the graph here; psflow keeps it open. Returns self."""
        return self


class MonitoredTrainingSession:
    """A training session that initializes variables, runs hooks and knows when to stop.

    `is_chief` is taken from `TF_CONFIG` when a cluster is configured (worker 0 is the chief),
    so every worker can run the same script unchanged.

    `master` is "" (the cluster in `TF_CONFIG`, or none) or a tf.train.Server's target.
    The chief writes the graph's summaries (`scaffold.summary_op`, default every summary
    merged) to `summary_dir` (default `checkpoint_dir`) every `save_summaries_steps` (default
    100) or `save_summaries_secs`, as TensorBoard event files.

    With `export_dir` the chief also exports servables (psflow.saved_model) as numbered
    versions `export_dir/1`, `export_dir/2`, ...: one at the end and one every
    `export_every_n_checkpoints` checkpoints; `export_signature` is what they take and
    return, (inputs, outputs) as two {key: tensor} dicts, or a signature_def_map. Without
    `export_dir`, PSFLOW_EXPORT_DIR (set by `launch --export-dir`) names it, and
    PSFLOW_EXPORT_EVERY_N_CHECKPOINTS the default of `export_every_n_checkpoints`.
    One checkpoint in `checkpoint_full_every` holds every table row, the others the rows
    changed since (None: PSFLOW_CHECKPOINT_FULL_EVERY, see psflow.checkpoint_chain).

    TensorFlow's `config`, `stop_grace_period_secs`, `log_step_count_steps`, `max_wait_secs`
    and `save_graph_def` are accepted and have no effect here (they tune TF's own runtime).
    Any other argument is a TypeError.
    """

    def __init__(self, master="", is_chief=True, checkpoint_dir=None, scaffold=None,
                 hooks=None, chief_only_hooks=None, save_checkpoint_secs=None,
                 save_summaries_steps=None, save_summaries_secs=None, config=None,
                 stop_grace_period_secs=120, log_step_count_steps=100, max_wait_secs=7200,
                 save_checkpoint_steps=None, summary_dir=None, save_graph_def=True,
                 max_to_keep=5, export_dir=None, export_signature=None,
                 export_every_n_checkpoints=None, checkpoint_full_every=None):
        scaffold = scaffold if scaffold is not None else Scaffold()
        if not isinstance(scaffold, Scaffold):
            raise TypeError(f"scaffold must be a psflow.train.Scaffold, got {scaffold!r}")
        self.scaffold = scaffold
        self.graph = get_default_graph()
        get_or_create_global_step(self.graph)
        # master: a tf.train.Server's target names the cluster; without one TF_CONFIG does.
        self.task = task_for_target(master) if master else task_config_from_env()
        distributed = self.task is not None and bool(self.task.ps_addresses)
        self.is_chief = self.task.is_chief if distributed else bool(is_chief)
        # On a cluster the manifests can name a shared volume for checkpoints.
        checkpoint_dir = checkpoint_dir or settings.CHECKPOINT_DIR.get()
        self._hooks = list(hooks or [])
        if export_dir is None and settings.EXPORT_DIR.get() is not None:
            # `launch --export-dir` names the base path; the script names what to export.
            export_dir = settings.EXPORT_DIR.get()
            if export_signature is None:
                raise ValueError(f"{settings.EXPORT_DIR.name} ({export_dir}) asks for exports: "
                                 "give MonitoredTrainingSession export_signature, (inputs, "
                                 "outputs) or a signature_def_map")
            if export_every_n_checkpoints is None:
                export_every_n_checkpoints = settings.EXPORT_EVERY_N_CHECKPOINTS.get()
        if export_dir is not None and export_signature is None:
            raise ValueError("export_dir needs export_signature: (inputs, outputs) or a "
                             "signature_def_map")
        exporter = ServableExportHook(export_dir, export_signature, export_every_n_checkpoints) \
            if export_dir is not None and self.is_chief else None
        if self.is_chief:
            self._hooks += list(chief_only_hooks or [])
            if checkpoint_dir:
                if save_checkpoint_secs is None and save_checkpoint_steps is None:
                    save_checkpoint_secs = 600  # TensorFlow's default
                self._hooks.append(CheckpointSaverHook(
                    checkpoint_dir, save_secs=save_checkpoint_secs,
                    save_steps=save_checkpoint_steps, max_to_keep=max_to_keep,
                    listeners=[exporter] if exporter else [], full_every=checkpoint_full_every))
            summary_dir = summary_dir or checkpoint_dir
            if save_summaries_steps is None and save_summaries_secs is None:
                save_summaries_steps = 100  # TensorFlow's default
            if summary_dir and (save_summaries_steps or save_summaries_secs):
                self._hooks.append(SummarySaverHook(
                    save_steps=None if save_summaries_secs else save_summaries_steps,
                    save_secs=save_summaries_secs or None, output_dir=summary_dir,
                    scaffold=scaffold))
            if exporter is not None:  # after the checkpoint hook: it exports the last one
                self._hooks.append(exporter)
        self.summary_dir = summary_dir if self.is_chief else None
        for hook in self._hooks:
            hook.begin()
        # The chief resumes from the latest checkpoint; the others wait for it as usual.
        state = saver.latest_state(checkpoint_dir, self._saved_variables()) \
            if self.is_chief and checkpoint_dir else None
        initializer = (scaffold.init_op, scaffold.init_feed_dict)
        if distributed:
            self._session = _distributed_session(self.graph, self.task, state, checkpoint_dir,
                                                 initializer, self.summary_dir)
            fresh = self._session.initialized_here
        else:
            self._session = Session(graph=self.graph)
            self._session.run(global_variables_initializer())
            fresh = state is None
            if fresh and scaffold.init_op is not None:
                self._session.run(scaffold.init_op, scaffold.init_feed_dict)
            if state is not None:
                self._session.store.restore(state, get_global_step(self.graph))
        if fresh and self.is_chief and scaffold.init_fn is not None:
            scaffold.init_fn(scaffold, self._session)
        if scaffold.local_init_op is not None:
            self._session.run(scaffold.local_init_op, scaffold.local_init_feed_dict)
        elif self.graph.local_variables:  # TF1's default local_init_op
            with self.graph.as_default():
                self._session.run(local_variables_initializer())
        self._stop = False
        self._closed = False
        for hook in self._hooks:
            hook.after_create_session(self._session, self)

    def _saved_variables(self):
        step = get_global_step(self.graph)
        return [v for v in self.graph.variables if v is not step]

    @property
    def session(self):
        """The underlying session (local or distributed)."""
        return self._session

    @property
    def summary_writer(self):
        """The chief's FileWriter for summary_dir (None elsewhere, or without one)."""
        if not self.summary_dir:
            return None
        return summary.FileWriterCache.get(self.summary_dir)

    def request_stop(self):
        """Ends the training loop: should_stop() is True from now on."""
        self._stop = True

    def should_stop(self):
        """True once a hook or the script asked to stop, or the process was asked to stop
        (online training: see psflow.data.stream_state)."""
        return self._stop or self._closed or stream_state.stop_requested()

    def run(self, fetches, feed_dict=None):
        """Runs `fetches` like Session.run, with the hooks' fetches and feeds added."""
        if self._closed:
            raise RuntimeError("run() called on a closed MonitoredTrainingSession")
        context = SessionRunContext(SessionRunArgs(fetches, feed_dict), self._session)
        hook_fetches, feeds = [], dict(feed_dict or {})
        for hook in self._hooks:
            request = hook.before_run(context)
            hook_fetches.append(request.fetches if request is not None else [])
            if request is not None and request.feed_dict:
                overlap = set(request.feed_dict) & set(feeds)
                if overlap:
                    raise ValueError("a hook feeds a node the caller feeds too: " +
                                     ", ".join(getattr(n, "name", str(n)) for n in overlap))
                feeds.update(request.feed_dict)
        results = self._session.run({"caller": fetches, "hooks": hook_fetches}, feeds or None)
        for hook, hook_results in zip(self._hooks, results["hooks"], strict=False):
            hook.after_run(context, SessionRunValues(hook_results))
        if context.stop_requested:
            self._stop = True
        return results["caller"]

    def close(self, failed=False):
        """Ends the session. After normal training it also tells the parameter servers this
        worker is done; after a failure it does not, so a restarted worker can take over."""
        if self._closed:
            return
        self._closed = True
        done = False
        try:
            if not failed:
                self._await_other_workers()
                for hook in self._hooks:
                    hook.end(self._session)
                done = True  # a chief whose final save failed has not finished its work
        finally:
            self._session.finish(done=done)

    def _await_other_workers(self):
        """A chief that trained on a followed stream waits for the other workers to end
        before its final checkpoint, so that it holds their last steps and input positions
        (a distributed session only; see DistributedSession.await_other_workers)."""
        wait = getattr(self._session, "await_other_workers", None)
        if self.is_chief and wait is not None and stream_state.following():
            wait()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        # The end of the input (OutOfRangeError, StopIteration) ends training normally, and
        # the exception stops here, as in TF1.
        ended = exc_type is not None and issubclass(exc_type, (OutOfRangeError, StopIteration))
        self.close(failed=exc_type is not None and not ended)
        return ended and issubclass(exc_type, OutOfRangeError)


def cluster_session(target, graph=None):
    """`tf.Session(server.target)`: a session on that server's cluster. The chief initializes
    the variables as it starts; the session finishes when the script closes it or exits."""
    session = _distributed_session(graph or get_default_graph(), task_for_target(target),
                                   None, None, None)
    session.finish_at_exit()
    return session


def _distributed_session(graph, task, restore, checkpoint_dir, initializer, summary_dir=None):
    """The session of a worker whose TF_CONFIG names a cluster; a chief with a `summary_dir`
    writes the job's curves there."""
    # Lazy: the worker runtime brings gRPC and protobuf, which local training never loads.
    from psflow.worker.distributed_session import DistributedSession
    return DistributedSession(graph, task, restore=restore, checkpoint_dir=checkpoint_dir,
                              initializer=initializer, summary_dir=summary_dir)


def _names_a_worker():
    """Whether TF_CONFIG makes this process a worker of a cluster with parameter servers."""
    try:
        task = task_config_from_env()
    except ValueError:  # a malformed TF_CONFIG is MonitoredTrainingSession's to report
        return False
    return task is not None and bool(task.ps_addresses) and \
        task.task_type in ("worker", "chief", "master")


session_lib.register_cluster(cluster_session, _names_a_worker)
