"""`SessionRunHook`, the base class of the hooks a MonitoredTrainingSession runs."""


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
