"""`MonitoredTrainingSession` and session-run hooks, as in TensorFlow 1.x.

With a cluster in `TF_CONFIG` the session is distributed: Variables live on the parameter
servers and the chief (worker 0) initializes them while the others wait for it by
notification. Without one, the same script trains locally in one process.
"""

import collections
import importlib
import logging
import os

from ..graph import get_default_graph
from ..session import Session
from ..state_ops import global_variables_initializer
from .cluster import task_config_from_env
from . import saver
from .optimizers import get_global_step, get_or_create_global_step
from psflow.ps import checkpoint as files

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


class SessionRunHook:
    """Base class of hooks; override what you need."""

    def begin(self):
        """Called once before the session is created; the graph may still change."""

    def after_create_session(self, session, coord):
        """Called once the session is ready (variables initialized or restored)."""

    def before_run(self, run_context):
        """May return SessionRunArgs: more fetches and feeds for this run."""
        return None

    def after_run(self, run_context, run_values):
        """Receives the results of the fetches its before_run asked for."""

    def end(self, session):
        """Called when the session closes normally."""


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
    the model file (`model.npz`, see psflow.load_model)."""

    def __init__(self, checkpoint_dir, save_secs=None, save_steps=None, max_to_keep=5):
        if save_secs is not None and save_steps is not None:
            raise ValueError("give save_secs or save_steps, not both")
        self.checkpoint_dir = checkpoint_dir
        self.max_to_keep = max_to_keep
        self._saver = None
        self._save_secs, self._save_steps = save_secs, save_steps

    def begin(self):
        self._global_step = get_global_step()
        self._graph = get_default_graph()

    def after_create_session(self, session, coord):
        graph, step_var = self._graph, self._global_step
        variables = [v for v in graph.variables if v is not step_var]
        store = session.store
        if hasattr(store, "clients"):
            save = lambda: session.with_recovery(  # noqa: E731
                saver.save_distributed, store, self.checkpoint_dir, self.max_to_keep)
        else:
            save = lambda: saver.save_local(store, variables, step_var,  # noqa: E731
                                            self.checkpoint_dir, self.max_to_keep)
        self._variables = variables
        self._saver = saver.CheckpointSaver(save, self._save_secs, self._save_steps)

    def before_run(self, run_context):
        return SessionRunArgs(self._global_step)

    def after_run(self, run_context, run_values):
        self._saver.after_step(int(run_values.results))

    def end(self, session):
        path = self._saver.save()
        values = session.run(self._variables)
        files.export_model(os.path.join(self.checkpoint_dir, files.MODEL_FILE),
                           {v.name: value for v, value in zip(self._variables, values)})
        log.info("saved %s and the model file", path)


class MonitoredTrainingSession:
    """A training session that initializes variables, runs hooks and knows when to stop.

    `is_chief` is taken from `TF_CONFIG` when a cluster is configured (worker 0 is the chief),
    so every worker can run the same script unchanged.
    """

    def __init__(self, master="", is_chief=True, checkpoint_dir=None, scaffold=None,
                 hooks=None, chief_only_hooks=None, save_checkpoint_secs=None,
                 save_checkpoint_steps=None, config=None, stop_grace_period_secs=None,
                 log_step_count_steps=None, max_to_keep=5, **unused):
        self.graph = get_default_graph()
        get_or_create_global_step(self.graph)
        self.task = task_config_from_env()
        distributed = self.task is not None and bool(self.task.ps_addresses)
        self.is_chief = self.task.is_chief if distributed else bool(is_chief)
        # On a cluster the manifests can name a shared volume for checkpoints.
        checkpoint_dir = checkpoint_dir or os.environ.get("PSFLOW_CHECKPOINT_DIR") or None
        self._hooks = list(hooks or [])
        if self.is_chief:
            self._hooks += list(chief_only_hooks or [])
            if checkpoint_dir:
                if save_checkpoint_secs is None and save_checkpoint_steps is None:
                    save_checkpoint_secs = 600  # TensorFlow's default
                self._hooks.append(CheckpointSaverHook(
                    checkpoint_dir, save_secs=save_checkpoint_secs,
                    save_steps=save_checkpoint_steps, max_to_keep=max_to_keep))
        for hook in self._hooks:
            hook.begin()
        # The chief resumes from the latest checkpoint; the others wait for it as usual.
        state = saver.latest_state(checkpoint_dir, self._saved_variables()) \
            if self.is_chief and checkpoint_dir else None
        if distributed:
            worker_session = importlib.import_module("psflow.worker.session")
            self._session = worker_session.DistributedSession(
                self.graph, self.task, restore=state, checkpoint_dir=checkpoint_dir)
        else:
            self._session = Session(self.graph)
            self._session.run(global_variables_initializer())
            if state is not None:
                saver.restore_local(self._session.store, state, get_global_step(self.graph))
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

    def request_stop(self):
        """Ends the training loop: should_stop() is True from now on."""
        self._stop = True

    def should_stop(self):
        return self._stop or self._closed

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
        for hook, hook_results in zip(self._hooks, results["hooks"]):
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
        try:
            if not failed:
                for hook in self._hooks:
                    hook.end(self._session)
        finally:
            if hasattr(self._session, "finish"):
                self._session.finish(done=not failed)
            else:
                self._session.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(failed=exc_type is not None and not issubclass(exc_type, StopIteration))
        return False
