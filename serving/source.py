"""The Source: watches a model's base path for numbered version folders and tells the manager
which to serve.

A version is a folder whose name is a non-negative integer (`BASE/7`); anything else under the
base path (a version being written under a temporary name, a file) is ignored. The base path is
read at start and then every `poll_wait_seconds` (zero or less: once).
"""

import logging
import os
import threading

log = logging.getLogger(__name__)


def scan(base_path):
    """{version: folder} of the numbered folders under `base_path` ({} when it is missing)."""
    try:
        entries = list(os.scandir(base_path))
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.error("cannot read model base path %s: %s", base_path, exc)
        return {}
    return {int(entry.name): entry.path for entry in entries
            if entry.name.isdigit() and entry.is_dir()}


class VersionSource:
    """Polls one base path and hands the versions its policy selects to `aspire`."""

    def __init__(self, base_path, policy, aspire, poll_wait_seconds=1.0):
        self.base_path = base_path
        self.policy = policy
        self._aspire = aspire
        self.poll_wait_seconds = poll_wait_seconds
        self._stop = threading.Event()
        self._thread = None
        self._empty_reported = False

    def poll(self):
        """One look at the base path."""
        found = scan(self.base_path)
        if not found and not self._empty_reported:
            log.warning("no version under %s (yet): waiting for BASE/1, BASE/2, ...",
                        self.base_path)
        self._empty_reported = not found
        self._aspire(self.policy.select(found))

    def start(self):
        self._thread = threading.Thread(target=self._run, name=f"source:{self.base_path}",
                                        daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            try:
                self.poll()
            except Exception:  # the source outlives any one bad look at the disk
                log.exception("polling %s failed", self.base_path)
            if self.poll_wait_seconds <= 0 or self._stop.wait(self.poll_wait_seconds):
                return

    def stop(self, timeout=None):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
