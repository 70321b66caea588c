"""The Loader: loads one version of a model from its folder and warms it up.

A loaded version is a `Servable`: the Predictor of the signature the server serves by default
and, made on first use, one per other signature a request names. Loading goes through
`load_fn(export_dir, signature=NAME)`, which returns an object with the
`psflow.saved_model.Predictor` interface (`signatures`, `signature`, `predict`).
"""

import logging
import threading
import time

import numpy as np

from psflow.errors import InvalidArgumentError

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"


def load_predictor(export_dir, signature=DEFAULT_SIGNATURE):
    """The default `load_fn`: psflow's own export format, read by
    `psflow.saved_model.Predictor.load`."""
    # Imported on first load: a server given another load_fn (tests, other formats) never
    # needs the export package.
    from psflow.saved_model import Predictor
    return Predictor.load(export_dir, signature=signature)


class Servable:
    """One loaded version: its predictors by signature, made from one export folder."""

    def __init__(self, version, export_dir, predictor, load_fn):
        self.version = version
        self.export_dir = export_dir
        self._load_fn = load_fn
        self._default = predictor
        self._by_signature = {predictor_signature_name(predictor): predictor}
        self._lock = threading.Lock()
        self.warmup_seconds = None  # how long its warm-up request took to predict
        # Whether a predict may wait on calls to other servers (live parameters read over the
        # network): then it is never run in the front's loop, however quick its warm-up.
        self.blocks = bool(getattr(getattr(predictor, "unbatched", predictor), "blocks", False))

    @property
    def signatures(self):
        """{signature name: Signature} of the export."""
        return self._default.signatures

    @property
    def default_signature(self):
        return predictor_signature_name(self._default)

    def predictor(self, signature_name=""):
        """The Predictor of a signature ("" is the default one); InvalidArgumentError for a
        signature the export does not have, as TF Serving answers."""
        name = signature_name or DEFAULT_SIGNATURE
        found = self._by_signature.get(name)
        if found is not None:
            return found
        if name not in self.signatures:
            raise InvalidArgumentError(
                f"Serving signature key \"{name}\" not found; the model has "
                f"{sorted(self.signatures)}")
        with self._lock:
            if name not in self._by_signature:
                self._by_signature[name] = self._load_fn(self.export_dir, signature=name)
            return self._by_signature[name]


def predictor_signature_name(predictor):
    """The name under which a Predictor's chosen signature is listed."""
    for name, signature in predictor.signatures.items():
        if signature is predictor.signature:
            return name
    return DEFAULT_SIGNATURE


def warmup_inputs(signature, batch=1):
    """A request built from a signature: zeros (empty strings) of each input's dtype, unknown
    dimensions set to `batch`."""
    inputs = {}
    for key, info in signature.inputs.items():
        shape = tuple(batch if size is None else size for size in (info.shape or ()))
        dtype = np.dtype(info.dtype)
        if dtype.kind in "OSU":
            inputs[key] = np.full(shape, b"", dtype=object)
        else:
            inputs[key] = np.zeros(shape, dtype=dtype)
    return inputs


# tensorflow_model_server's --max_num_load_retries and --load_retry_interval_micros.
MAX_NUM_LOAD_RETRIES = 5
LOAD_RETRY_INTERVAL_SECONDS = 60.0


class Loader:
    """Loads a version from its folder and warms it up before it serves.

    A version that fails to load is tried again `max_num_load_retries` times,
    `load_retry_interval_seconds` apart (the manager schedules the tries): an export still
    being copied in, or a file system briefly away, then loads once it is whole.
    """

    def __init__(self, load_fn=None, warmup=True, max_num_load_retries=MAX_NUM_LOAD_RETRIES,
                 load_retry_interval_seconds=LOAD_RETRY_INTERVAL_SECONDS):
        # The one line that picks the servable format: psflow's export by default.
        self.load_fn = load_fn or load_predictor
        self.warmup = warmup
        self.max_num_load_retries = max_num_load_retries
        self.load_retry_interval_seconds = load_retry_interval_seconds

    def load(self, version, export_dir):
        """A warmed-up Servable; raises whatever loading or the warm-up request raised."""
        started = time.monotonic()
        predictor = self.load_fn(export_dir, signature=DEFAULT_SIGNATURE)
        servable = Servable(version, export_dir, predictor, self.load_fn)
        if self.warmup:
            self._warm_up(servable, predictor, export_dir)
        log.info("loaded version %s from %s in %.3f s%s", version, export_dir,
                 time.monotonic() - started,
                 "" if servable.warmup_seconds is None else
                 f" (a warm-up predict takes {servable.warmup_seconds * 1e3:.2f} ms)")
        return servable

    @staticmethod
    def _warm_up(servable, predictor, export_dir):
        """Predicts a request of zeros (batch 1, else batch 0) and times it. A model whose
        inputs cannot all be zeros (a SparseTensor's indices beyond its zero dense shape)
        refuses both: it serves without a warm-up, as a model too slow to run in the loop."""
        failures = []
        for batch in (1, 0):
            inputs = warmup_inputs(predictor.signature, batch)
            try:
                outputs = predictor.predict(inputs)  # the first call also fills caches
            except InvalidArgumentError as exc:
                failures.append(f"batch {batch}: {exc}")
                continue
            # The model's own time, not a batch's wait for its timeout.
            model = getattr(predictor, "unbatched", predictor)
            warmup_started = time.perf_counter()
            model.predict(inputs)
            servable.warmup_seconds = time.perf_counter() - warmup_started
            missing = set(predictor.signature.outputs) - set(outputs)
            if missing:
                raise InvalidArgumentError(
                    f"the warm-up request of {export_dir} answered without {sorted(missing)}")
            return
        log.warning("%s serves without a warm-up: a request of zeros is not one it takes (%s)",
                    export_dir, "; ".join(failures))
