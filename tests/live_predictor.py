"""A Predictor-compatible object over a live psflow graph and Session: the same methods as
`psflow.saved_model.Predictor` (signatures, signature, predict, version, export_dir) with a real
computation, for testing the server apart from the export format.

`small_ctr_model(seed)` builds a model with a float input `x` (None, 3) and an int64 input
`ids` (None,), and outputs `scores` (None, 1) and `probabilities` (None, 1); `expected` is the
same computation in numpy. `write_version` makes a version folder a `load_fn` of this module
reads: `model.json` with the seed (and `"broken": true` for a version that fails to load,
`"delay"` for seconds each prediction takes, to hold requests in flight).
"""

import collections
import json
import os
import threading
import time

import numpy as np

import psflow as tf
from psflow.errors import InvalidArgumentError, NotFoundError

TensorInfo = collections.namedtuple("TensorInfo", "name dtype shape")
Signature = collections.namedtuple("Signature", "method_name inputs outputs")
PREDICT = "tensorflow/serving/predict"


def weights(seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((3, 1)).astype(np.float32),
            rng.standard_normal((10, 2)).astype(np.float32))


def expected(seed, x, ids):
    """The model's outputs in numpy."""
    w, table = weights(seed)
    scores = np.asarray(x, np.float32) @ w + table[np.asarray(ids)].sum(axis=1, keepdims=True)
    return {"scores": scores, "probabilities": 1 / (1 + np.exp(-scores))}


def _info(node):
    return TensorInfo(node.name, np.dtype(node.dtype), tuple(node.shape))


class LivePredictor:
    """Predicts by running a psflow Session on its graph; checks inputs as the Predictor does."""

    def __init__(self, graph, session, signatures, signature="serving_default", feeds=None,
                 fetches=None, version=None, export_dir=None):
        if signature not in signatures:
            raise NotFoundError(f"no signature '{signature}'")
        self.signatures = signatures
        self.signature = signatures[signature]
        self.version = version
        self.export_dir = export_dir
        self._session = session
        self._feeds = feeds
        self._fetches = fetches
        self._lock = threading.Lock()  # a Session run at a time
        self.delay = 0.0

    def predict(self, inputs):
        signature = self.signature
        missing = sorted(set(signature.inputs) - set(inputs))
        extra = sorted(set(inputs) - set(signature.inputs))
        if missing or extra:
            raise InvalidArgumentError(f"inputs missing {missing}, unknown {extra}")
        feed = {}
        for key, info in signature.inputs.items():
            value = np.asarray(inputs[key])
            if not np.can_cast(value.dtype, info.dtype, "same_kind"):
                raise InvalidArgumentError(f"input '{key}' expects {info.dtype}, "
                                           f"got {value.dtype}")
            if value.shape != tuple(got if want is None else want
                                    for want, got in zip(info.shape, value.shape, strict=False)) \
                    or value.ndim != len(info.shape):
                raise InvalidArgumentError(f"input '{key}' expects shape {info.shape}, "
                                           f"got {value.shape}")
            feed[self._feeds[key]] = value.astype(info.dtype)
        keys = sorted(signature.outputs)
        time.sleep(self.delay)
        with self._lock:
            values = self._session.run([self._fetches[k] for k in keys], feed)
        return dict(zip(keys, values, strict=True))


def small_ctr_model(seed, signature="serving_default", version=None, export_dir=None):
    graph = tf.Graph()
    with graph.as_default():
        x = tf.placeholder(tf.float32, (None, 3), name="x")
        ids = tf.placeholder(tf.int64, (None,), name="ids")
        w_value, table_value = weights(seed)
        w = tf.Variable(w_value, name="w")
        table = tf.Variable(table_value, name="table")
        scores = tf.matmul(x, w) + tf.reduce_sum(tf.gather(table, ids), axis=1, keepdims=True)
        probabilities = tf.sigmoid(scores)
        session = tf.Session(graph=graph)
        session.run(tf.global_variables_initializer())
    outputs = {"scores": scores, "probabilities": probabilities}
    main = Signature(PREDICT, {"x": _info(x), "ids": _info(ids)},
                     {k: _info(v) for k, v in outputs.items()})
    scores_only = Signature(PREDICT, {"x": _info(x), "ids": _info(ids)},
                            {"scores": _info(scores)})
    return LivePredictor(graph, session, {"serving_default": main, "scores_only": scores_only},
                         signature, {"x": x, "ids": ids}, outputs, version, export_dir)


def write_version(base, version, seed, broken=False, delay=0.0):
    """BASE/VERSION holding what `load` reads, written aside and renamed in."""
    temporary = os.path.join(base, f".tmp-{version}")
    os.makedirs(temporary)
    with open(os.path.join(temporary, "model.json"), "w") as f:
        json.dump({"seed": seed, "broken": broken, "delay": delay}, f)
    os.rename(temporary, os.path.join(base, str(version)))
    return os.path.join(base, str(version))


def load(export_dir, signature="serving_default"):
    """A `load_fn`: the LivePredictor a version folder of write_version describes."""
    path = os.path.join(export_dir, "model.json")
    try:
        with open(path) as f:
            spec = json.load(f)
    except FileNotFoundError:
        raise NotFoundError(f"{path} is missing") from None
    if spec["broken"]:
        raise tf.errors.DataLossError(f"{path}: the export is corrupt")
    predictor = small_ctr_model(spec["seed"], signature, int(os.path.basename(export_dir)),
                                export_dir)
    predictor.delay = spec.get("delay", 0.0)
    return predictor
