"""The one path both fronts (gRPC and REST) take: find the model's manager, hold a handle on
the version a request names, predict, answer. The fronts only translate encodings.

It also counts the requests in flight (each front enters `request()` around a whole call,
answer included), so a shutdown refuses new requests and waits for the running ones to finish,
and counts every predict request, its errors and latency for the metrics (request_metrics.py).
"""

import contextlib
import threading
import time

from psflow.errors import InvalidArgumentError, NotFoundError, UnavailableError
from psflow.serving.error_mapping import code_name_of
from psflow.serving.request_metrics import RequestStats


class ServerCore:
    """The models a server serves, by name ({name: ModelManager})."""

    def __init__(self, managers, traffic_split=None):
        self.managers = dict(managers)
        self.traffic_split = traffic_split  # a TrafficSplit: requests naming no version
        self.stats = RequestStats()
        self._in_flight = 0
        self._closing = False
        self._idle = threading.Condition()

    def labels_of(self, name):
        """The version labels of a served model; None for a model not served."""
        manager = self.managers.get(name)
        return manager.labels if manager is not None else None

    def quick(self, name):
        """Whether a model's requests are quick to predict (ModelManager.quick); False for a
        model not served (its error is answered wherever)."""
        manager = self.managers.get(name)
        return manager is not None and manager.quick

    def manager(self, name):
        manager = self.managers.get(name)
        if manager is None:
            raise NotFoundError(f"model '{name}' is not served here; served: "
                                f"{sorted(self.managers)}")
        return manager

    # Models come and go while requests read `managers`: replace the dict, never change it.
    def add(self, name, manager):
        self.managers = {**self.managers, name: manager}

    def remove(self, name):
        """The manager of `name`, no longer served."""
        managers = dict(self.managers)
        manager = managers.pop(name)
        self.managers = managers
        return manager

    @contextlib.contextmanager
    def request(self):
        """Counts one request in flight; UnavailableError once shutting down."""
        with self._idle:
            if self._closing:
                raise UnavailableError("the server is shutting down")
            self._in_flight += 1
        try:
            yield
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def close(self, timeout=None):
        """Refuses new requests and waits up to `timeout` s for those in flight; True when
        none is left."""
        with self._idle:
            self._closing = True
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    @property
    def available(self):
        """True once every model has a version available."""
        return bool(self.managers) and all(m.available for m in self.managers.values())

    def predict(self, name, inputs, version=None, label=None, signature_name="",
                output_filter=()):
        """(version, signature name, {output key: array}) for `inputs`: {input key: array}, or
        a function of the signature that returns them (the REST front reads JSON values by the
        signature's dtypes). A request naming no version and no label goes where the traffic
        split sends it. Every call is counted in `stats`, answered or failed."""
        with self._counted(name, inputs, version, label, signature_name, output_filter) as steps:
            predictor, feed = next(steps)
            return _finished(steps, predictor.predict(feed))

    async def predict_async(self, name, inputs, version=None, label=None, signature_name="",
                            output_filter=(), in_loop=False):
        """`predict` on an event loop, for predictors that batch (`predict_async`): the
        request waits for its batch without holding a thread; with `in_loop` the batch runs
        in the loop itself."""
        with self._counted(name, inputs, version, label, signature_name, output_filter) as steps:
            predictor, feed = next(steps)
            batched = getattr(predictor, "predict_async", None)
            outputs = await batched(feed, in_loop) if batched else predictor.predict(feed)
            return _finished(steps, outputs)

    @contextlib.contextmanager
    def _counted(self, *request):
        """A predict's steps (`_steps`), the request counted in `stats` by its outcome."""
        start, where = time.perf_counter(), ["", ""]  # (model, version) reached, for metrics
        steps = self._steps(where, *request)
        try:
            yield steps
        except Exception as exc:  # counted by its code, then answered by the front
            steps.close()
            self.stats.record(*where, time.perf_counter() - start, code_name_of(exc))
            raise
        self.stats.record(*where, time.perf_counter() - start)

    def _steps(self, where, name, inputs, version, label, signature_name, output_filter):
        """A predict around its one call of the model: yields (predictor, inputs), takes the
        outputs back, returns the answer; the version stays held in between."""
        manager = self.manager(name)
        where[0] = name
        if version is None and label is None and self.traffic_split is not None:
            label = self.traffic_split.label_for(name)
        with manager.handle(version, label) as handle:
            where[1] = str(handle.version)
            predictor = handle.servable.predictor(signature_name)
            signature = predictor.signature
            unknown = sorted(set(output_filter) - set(signature.outputs))
            if unknown:
                raise InvalidArgumentError(
                    f"output_filter names {unknown}, which the signature does not have; "
                    f"its outputs are {sorted(signature.outputs)}")
            if callable(inputs):
                inputs = inputs(signature)
            if not inputs:
                raise InvalidArgumentError(
                    f"the request has no inputs; the signature takes {sorted(signature.inputs)}")
            outputs = yield predictor, inputs
            if output_filter:
                outputs = {key: outputs[key] for key in output_filter}
            return handle.version, signature_name or handle.servable.default_signature, outputs

    def metadata(self, name, version=None, label=None):
        """(version, {signature name: Signature}) of the version a request names."""
        with self.manager(name).handle(version, label) as handle:
            return handle.version, dict(handle.servable.signatures)

    def status(self, name, version=None, label=None):
        """VersionStatus of a model's versions (or of the one named)."""
        manager = self.manager(name)
        if label is not None:
            with manager.handle(label=label) as handle:
                version = handle.version
        return manager.statuses(version)


def _finished(steps, outputs):
    """The answer a predict's steps return once given the outputs."""
    try:
        steps.send(outputs)
    except StopIteration as stop:
        return stop.value
    raise RuntimeError("a predict's steps yielded twice")
