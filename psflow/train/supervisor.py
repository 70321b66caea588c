"""TF1's `tf.train.Supervisor`, on top of MonitoredTrainingSession:

    sv = tf.train.Supervisor(is_chief=is_chief, logdir=train_dir, init_op=init_op,
                             global_step=global_step, save_model_secs=600)
    with sv.managed_session(server.target) as sess:       # or sv.prepare_or_wait_for_session
        while not sv.should_stop() and step < steps:
            _, step = sess.run([train_op, global_step])

The chief initializes the variables (running `init_op` and `init_fn`) or restores them from the
latest checkpoint in `logdir`, saves a checkpoint there every `save_model_secs` and when it
stops, and writes `summary_op` every `save_summaries_secs`; the other workers wait for it by
notification, not by polling every `recovery_wait_secs`.
"""

import contextlib
import logging

from ..errors import OutOfRangeError
from ..graph import get_default_graph
from ..session import at_exit
from .coordinator import Coordinator
from .monitored_session import MonitoredTrainingSession, Scaffold
from .optimizers import _adopt_global_step, get_global_step

log = logging.getLogger(__name__)


class _UseDefault:
    def __repr__(self):
        return "USE_DEFAULT"


USE_DEFAULT = _UseDefault()


class Supervisor:
    """`ready_op`, `ready_for_local_init_op`, `saver`, `recovery_wait_secs`,
    `stop_grace_secs`, `checkpoint_basename`, `session_manager` and `summary_writer` are
    accepted: psflow's session is ready once the chief has initialized or restored the
    variables, and the chief writes psflow's checkpoints itself."""

    USE_DEFAULT = USE_DEFAULT

    def __init__(self, graph=None, ready_op=USE_DEFAULT, ready_for_local_init_op=USE_DEFAULT,
                 is_chief=True, init_op=USE_DEFAULT, init_feed_dict=None,
                 local_init_op=USE_DEFAULT, logdir=None, summary_op=USE_DEFAULT,
                 saver=USE_DEFAULT, global_step=USE_DEFAULT, save_summaries_secs=120,
                 save_model_secs=600, recovery_wait_secs=30, stop_grace_secs=120,
                 checkpoint_basename="model.ckpt", session_manager=None,
                 summary_writer=USE_DEFAULT, init_fn=None, local_init_run_options=None):
        self.graph = graph or get_default_graph()
        self._is_chief = bool(is_chief)
        self.logdir = logdir
        self._init_op = None if init_op is USE_DEFAULT else init_op
        self._init_feed_dict = init_feed_dict
        self._init_fn = init_fn
        self._local_init_op = None if local_init_op is USE_DEFAULT else local_init_op
        self._summary_op = summary_op
        self._save_summaries_secs = save_summaries_secs
        self._save_model_secs = save_model_secs
        self.saver = None if saver is USE_DEFAULT else saver
        self._global_step = global_step
        self.coord = Coordinator()
        self._session = None

    # -- the session ---------------------------------------------------------------------------
    def prepare_or_wait_for_session(self, master="", config=None, wait_for_checkpoint=False,
                                    max_wait_secs=7200, start_standard_services=True):
        """The chief's session once it has initialized or restored the variables; another
        worker's once the chief has. Its runs save checkpoints and summaries when due."""
        if self._session is not None:
            raise RuntimeError("this Supervisor already has a session; call stop() first")
        if self._global_step is not USE_DEFAULT and self._global_step is not None:
            _adopt_global_step(self.graph, self._global_step)
        scaffold = Scaffold(init_op=self._init_op, init_feed_dict=self._init_feed_dict,
                            init_fn=self._init_fn and (lambda _, sess: self._init_fn(sess)),
                            local_init_op=self._local_init_op,
                            summary_op=None if self._summary_op is USE_DEFAULT
                            else self._summary_op)
        # save_model_secs=0: no checkpoint while training, one when the supervisor stops.
        # summary_op=None: no summaries.
        summaries = self._summary_op is not None and bool(self._save_summaries_secs)
        with self.graph.as_default():
            self._session = MonitoredTrainingSession(
                master=master, is_chief=self._is_chief, checkpoint_dir=self.logdir,
                scaffold=scaffold, save_checkpoint_secs=self._save_model_secs or None,
                save_checkpoint_steps=None if self._save_model_secs else 0,
                save_summaries_secs=self._save_summaries_secs if summaries else None,
                save_summaries_steps=None if summaries else 0)
        self._is_chief = self._session.is_chief
        # TF1 scripts often end without sv.stop(): the session then ends when the process does.
        session = self._session
        at_exit(lambda failed: session.close(failed=failed))
        return self._session

    @contextlib.contextmanager
    def managed_session(self, master="", config=None, start_standard_services=True,
                        close_summary_writer=True):
        """A context manager around prepare_or_wait_for_session: on leaving, the session
        stops (the chief saves a last checkpoint). An OutOfRangeError ends training quietly,
        as in TF1; other errors propagate after the session is closed."""
        session = self.prepare_or_wait_for_session(master, config)
        try:
            yield session
        except OutOfRangeError:
            self.stop()
        except BaseException:
            self.request_stop()
            self._close(failed=True)
            raise
        else:
            self.stop()

    # -- stopping ---------------------------------------------------------------------------
    def should_stop(self):
        return self.coord.should_stop() or \
            (self._session is not None and self._session.should_stop())

    def request_stop(self, ex=None):
        self.coord.request_stop(ex)
        if self._session is not None:
            self._session.request_stop()

    def stop(self, threads=None, close_summary_writer=True, ignore_live_threads=False):
        """Ends training: the chief saves a last checkpoint; this worker is reported done."""
        self.request_stop()
        self._close(failed=False)

    def _close(self, failed):
        session, self._session = self._session, None
        if session is not None:
            session.close(failed=failed)

    def wait_for_stop(self):
        """Returns once stop is requested (by should_stop's hooks or request_stop)."""
        if not self.should_stop():
            raise RuntimeError("Supervisor.wait_for_stop(): nothing else runs that could "
                               "request a stop; call request_stop() or stop()")

    # -- what scripts read or call ---------------------------------------------------------------
    @property
    def is_chief(self):
        return self._is_chief

    @property
    def session(self):
        return self._session.session if self._session is not None else None

    @property
    def global_step(self):
        return get_global_step(self.graph)

    @property
    def summary_op(self):
        return None if self._summary_op is USE_DEFAULT else self._summary_op

    @property
    def summary_writer(self):
        return self._session.summary_writer if self._session is not None else None

    @property
    def save_path(self):
        return self.logdir

    def summary_computed(self, sess, summary, global_step=None):
        """Writes a summary the script computed (from sess.run(summary_op)) to logdir."""
        writer = self.summary_writer
        if writer is None:
            if self._session is None:
                raise RuntimeError("summary_computed() needs the session to have started")
            return  # not the chief, or no logdir: TF1 writes nothing either
        if global_step is None:
            global_step = int(self._session.session.run(self.global_step))
        writer.add_summary(summary, global_step)

    def start_standard_services(self, sess):
        return []

    def start_queue_runners(self, sess, queue_runners=None):
        """Accepted: psflow has no queue threads; returns []."""
        return []

    def loop(self, timer_interval_secs, target, args=None, kwargs=None):
        raise NotImplementedError("psflow does not implement tf.train.Supervisor.loop; run "
                                  "periodic work in the training loop")
