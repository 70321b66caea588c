"""Noticing that the process which started this one is gone, so that a job whose launcher was
killed with SIGKILL leaves nothing behind. Used by the parameter servers (`--parent-pid`) and
the workers (`PSFLOW_PARENT_PID`)."""

import logging
import os
import threading
import time

from . import settings

log = logging.getLogger(__name__)

PARENT_ENV = settings.PARENT_PID.name
WATCH_INTERVAL_S = 0.5


def parent_from_env(environ=None):
    """The pid in PSFLOW_PARENT_PID, or None when it is unset; SettingError if it is no pid."""
    return settings.PARENT_PID.get(environ)


class ParentWatch:
    """Tells whether process `pid` still runs. When it is this process's own parent, being
    re-parented also means it is gone (its pid may be reused by then)."""

    def __init__(self, pid):
        self.pid = pid
        self._is_ours = pid == os.getppid()

    def alive(self):
        if self._is_ours and os.getppid() != self.pid:
            return False
        return alive(self.pid)

    def start(self, on_gone, name="psflow-parent-watch"):
        """Calls on_gone() from a daemon thread once the parent is gone."""
        def watch():
            while self.alive():
                time.sleep(WATCH_INTERVAL_S)
            on_gone()

        threading.Thread(target=watch, name=name, daemon=True).start()
        return self


def alive(pid):
    """True while process `pid` runs (an exited but unreaped process counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


_exit_watch_started = False


def exit_with_parent():
    """Exits this process (status 1) once the process named by PSFLOW_PARENT_PID is gone;
    does nothing when it is unset. Starts at most one watch per process."""
    global _exit_watch_started
    pid = parent_from_env()
    if pid is None or _exit_watch_started:
        return
    _exit_watch_started = True

    def gone():
        log.error("the launcher (pid %d) is gone; exiting", pid)
        os._exit(1)

    ParentWatch(pid).start(gone)
