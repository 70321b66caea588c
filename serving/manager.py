"""The Manager: the versions of one model, their states, and the handles requests hold.

The policy is availability-preserving, as TensorFlow Serving's: a new version is loaded and
warmed up before any old one is unloaded, and old versions are unloaded only once a version
the source asks for is available, so a version that fails to load leaves the current one
serving. A failed load is tried again, as tensorflow_model_server's --max_num_load_retries and
--load_retry_interval_micros say (the version shows LOADING meanwhile); once the tries run out
the version ends with the error in its status. A request holds a `ServableHandle`; a version
taken out of service is unloaded when its last handle is released, so no request loses its
version midway.
"""

import logging
import threading

from psflow.errors import InvalidArgumentError, NotFoundError
from psflow.serving import heap
from psflow.serving.error_mapping import code_name_of

log = logging.getLogger(__name__)

QUICK_SECONDS = 0.002

# TF Serving's ModelVersionStatus.State names.
START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


class VersionRecord:
    """One version as the manager knows it."""

    def __init__(self, version, export_dir):
        self.version = version
        self.export_dir = export_dir
        self.state = START
        self.error = None  # (TF error code name, message) of a load that failed for good
        self.last_error = None  # of the latest failed try
        self.tries = 0  # failed tries
        self.servable = None
        self.refs = 0


class VersionStatus:
    """A snapshot of a version's state for GetModelStatus."""

    def __init__(self, record):
        self.version = record.version
        self.state = record.state
        self.error_code, self.error_message = record.error or ("OK", "")


class ServableHandle:
    """A loaded version held by one request: the version stays loaded until release()."""

    def __init__(self, manager, record):
        self._manager = manager
        self._record = record
        self.servable = record.servable
        self.version = record.version

    def release(self):
        if self._record is not None:
            self._manager._release(self._record)
            self._record = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


class ModelManager:
    """The versions of one model: loads what the source asks for, serves handles, unloads."""

    def __init__(self, name, loader, labels=None, on_availability=None):
        self.name = name
        self.loader = loader
        self._labels = dict(labels or {})
        self._on_availability = on_availability
        self._records = {}
        self._lock = threading.Lock()
        self._aspire_lock = threading.Lock()  # one set of aspired versions handled at a time
        self._aspired = {}  # the versions the source asks for, as it last said
        self._closed = threading.Event()  # set by unload_all: no more retries
        self._available = False

    def set_labels(self, labels):
        with self._lock:
            self._labels = dict(labels)

    @property
    def labels(self):
        """{label: version}."""
        with self._lock:
            return dict(self._labels)

    def aspire(self, versions):
        """Serve `versions` ({version: export folder}): load the new ones, then unload the
        others if one of `versions` is available. A version that fails to load is tried again
        in the background as the loader's retries say; once they run out it stays failed."""
        with self._aspire_lock:
            self._aspired = dict(versions)
            for version in sorted(versions):
                with self._lock:
                    record = self._records.get(version)
                    if record is not None and (record.state in (LOADING, AVAILABLE)
                                               or record.error is not None):
                        continue
                    record = VersionRecord(version, versions[version])
                    record.state = LOADING
                    self._records[version] = record
                if not self._load(record):
                    threading.Thread(target=self._retry, args=(record,), daemon=True,
                                     name=f"retry:{self.name}:{version}").start()
            with self._lock:
                for record in self._records.values():
                    if record.state == LOADING and record.version not in versions:
                        log.info("model %s version %s is no longer asked for: not tried "
                                 "again", self.name, record.version)
                        self._fail_locked(record)
            self._settle()

    def _load(self, record):
        """One try at loading `record`; False when it failed and is to be tried again."""
        try:
            servable = self.loader.load(record.version, record.export_dir)
        except Exception as exc:  # a broken export must never stop the server
            with self._lock:
                record.tries += 1
                record.last_error = (code_name_of(exc), f"{type(exc).__name__}: {exc}")
                retries = self.loader.max_num_load_retries
                again = record.tries <= retries and not self._closed.is_set()
                if not again:
                    self._fail_locked(record)
            if again:
                log.warning("model %s version %s failed to load from %s (try %d of %d), "
                            "trying again in %g s: %s", self.name, record.version,
                            record.export_dir, record.tries, retries + 1,
                            self.loader.load_retry_interval_seconds, exc)
            else:
                log.error("model %s version %s failed to load from %s: %s", self.name,
                          record.version, record.export_dir, exc)
            return not again
        with self._lock:
            record.servable = servable
            record.state = AVAILABLE
        heap.loaded()
        log.info("model %s version %s is available", self.name, record.version)
        return True

    def _fail_locked(self, record):
        record.state = END
        record.error = record.last_error

    def _retry(self, record):
        """Tries `record` again every retry interval until it loads, its retries run out, it
        is no longer wanted or the manager unloads everything."""
        while not self._closed.wait(self.loader.load_retry_interval_seconds):
            with self._aspire_lock:
                with self._lock:
                    if record.state != LOADING:
                        return
                if self._load(record):
                    self._settle()
                    return
        with self._lock:
            if record.state == LOADING:
                self._fail_locked(record)
        self._notify()

    def _settle(self):
        """Unloads the versions no longer wanted, once a wanted one is available."""
        with self._lock:
            serving = [r for r in self._records.values() if r.state == AVAILABLE]
            if any(r.version in self._aspired for r in serving):
                for record in serving:
                    if record.version not in self._aspired:
                        self._unload_locked(record)
        self._notify()

    def _unload_locked(self, record):
        record.state = UNLOADING
        log.info("model %s version %s is unloading (%d requests in flight)", self.name,
                 record.version, record.refs)
        if record.refs == 0:
            self._finish_locked(record)

    def _finish_locked(self, record):
        record.servable = None
        record.state = END
        heap.unloaded()
        log.info("model %s version %s is unloaded", self.name, record.version)

    def unload_all(self):
        self._closed.set()
        with self._lock:
            for record in self._records.values():
                if record.state == AVAILABLE:
                    self._unload_locked(record)
        self._notify()

    def _notify(self):
        with self._lock:
            available = any(r.state == AVAILABLE for r in self._records.values())
            changed, self._available = available != self._available, available
        if changed and self._on_availability is not None:
            self._on_availability(self.name, available)

    @property
    def available(self):
        return self._available

    @property
    def quick(self):
        """True when every available version's warm-up predict took under QUICK_SECONDS
        and none waits on other servers: its requests may be answered in the front's loop
        (front_loop.py)."""
        records = [r for r in list(self._records.values()) if r.state == AVAILABLE]
        return bool(records) and all(
            r.servable is not None and r.servable.warmup_seconds is not None and
            r.servable.warmup_seconds < QUICK_SECONDS and not r.servable.blocks
            for r in records)

    def handle(self, version=None, label=None):
        """A handle on the version a request names: a number, a label, or neither (the
        latest available). NotFoundError for an unknown or unavailable version or label, and
        when no version is available yet, as TF Serving answers."""
        with self._lock:
            if label is not None:
                if label not in self._labels:
                    raise InvalidArgumentError(  # TF Serving's code for it
                        f"Unrecognized servable version label: model {self.name} has no "
                        f"version label '{label}'")
                version = self._labels[label]
            if version is None:
                serving = [r for r in self._records.values() if r.state == AVAILABLE]
                if not serving:
                    raise NotFoundError(f"Servable not found for request: Latest({self.name})"
                                        "; no version of it is available yet")
                record = max(serving, key=lambda r: r.version)
            else:
                record = self._records.get(version)
                if record is None or record.state != AVAILABLE:
                    state = "unknown" if record is None else record.state
                    raise NotFoundError(f"model {self.name} version {version} is not "
                                        f"available (state {state})")
            record.refs += 1
            return ServableHandle(self, record)

    def _release(self, record):
        with self._lock:
            record.refs -= 1
            if record.state == UNLOADING and record.refs == 0:
                self._finish_locked(record)

    def statuses(self, version=None):
        """VersionStatus of every version (or of one), newest first."""
        with self._lock:
            if version is not None:
                if version not in self._records:
                    raise NotFoundError(f"model {self.name} has no version {version}")
                return [VersionStatus(self._records[version])]
            return [VersionStatus(self._records[v]) for v in sorted(self._records, reverse=True)]
