"""Streaming metrics with TF1's `tf.metrics` form: each returns `(value, update_op)`. The
counts live in local variables (each process its own; run local_variables_initializer(),
which MonitoredTrainingSession does), `update_op` adds a batch to them and returns the
updated value, and `value` reads the metric over every batch added so far."""

import numpy as np

from .comparison_ops import equal
from .dtypes import float32, float64
from .graph import Node, convert_to_tensor, name_scope
from .math_ops import cast, ones_like
from .reduction_ops import reduce_sum
from .variables import GraphKeys, Variable

_EPSILON = 1e-7
CURVES = ("ROC", "PR")
SUMMATIONS = ("trapezoidal", "careful_interpolation", "minoring", "majoring")


def _local(value, name):
    return Variable(np.asarray(value), trainable=False, name=name,
                    collections=[GraphKeys.LOCAL_VARIABLES, GraphKeys.METRIC_VARIABLES])


def _weights_like(values, weights):
    if weights is None:
        return ones_like(cast(values, float64))
    return cast(convert_to_tensor(weights), float64) * ones_like(cast(values, float64))


def thresholds(num_thresholds):
    """TF1's thresholds for auc: just below 0, evenly spaced inside (0, 1), just above 1."""
    inner = [(i + 1) / (num_thresholds - 1) for i in range(num_thresholds - 2)]
    return np.array([0.0 - _EPSILON] + inner + [1.0 + _EPSILON])


class _Confusion(Node):
    """(4, T) weighted counts of true positives, false negatives, true negatives and false
    positives of one batch at each threshold (prediction > threshold means positive)."""

    def __init__(self, labels, predictions, weights, thresholds, name=None):
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        super().__init__((labels, predictions, weights), name=name or "confusion",
                         shape=(4, len(self.thresholds)), dtype=np.dtype(np.float64))

    def forward(self, labels, predictions, weights):
        labels = np.asarray(labels).reshape(-1)
        predictions = np.asarray(predictions, dtype=np.float64).reshape(-1)
        weights = np.broadcast_to(np.asarray(weights, dtype=np.float64),
                                  np.shape(predictions)).reshape(-1)
        if labels.shape != predictions.shape:
            raise ValueError(f"auc: labels have {labels.size} values, predictions "
                             f"{predictions.size}")
        if predictions.size and (predictions.min() < 0.0 or predictions.max() > 1.0):
            raise ValueError("auc: predictions must be in [0, 1] (probabilities), got values "
                             f"in [{predictions.min():g}, {predictions.max():g}]")
        positive = labels.astype(bool)
        counts = np.empty((4, len(self.thresholds)))
        for row, (mask, want_above) in enumerate(((positive, True), (positive, False),
                                                  (~positive, False), (~positive, True))):
            # weight of the entries of `mask` above (or not above) each threshold
            p, w = predictions[mask], weights[mask]
            order = np.argsort(p, kind="stable")
            below = np.concatenate(([0.0], np.cumsum(w[order])))[
                np.searchsorted(p[order], self.thresholds, side="right")]
            counts[row] = (w.sum() - below) if want_above else below
        return counts


class _AucValue(Node):
    def __init__(self, counts, curve, summation_method, name=None):
        self.curve, self.summation_method = curve, summation_method
        super().__init__((counts,), name=name or "auc", shape=(), dtype=np.dtype(np.float32))

    def forward(self, counts):
        tp, fn, tn, fp = (np.asarray(c, dtype=np.float64) for c in counts)
        if self.curve == "ROC":
            x = fp / (fp + tn + _EPSILON)
            y = tp / (tp + fn + _EPSILON)
        else:
            x = tp / (tp + fn + _EPSILON)
            y = tp / (tp + fp + _EPSILON)
        width = x[:-1] - x[1:]
        if self.summation_method == "minoring":
            heights = np.minimum(y[:-1], y[1:])
        elif self.summation_method == "majoring":
            heights = np.maximum(y[:-1], y[1:])
        else:
            heights = (y[:-1] + y[1:]) / 2.0
        return np.float32(np.sum(width * heights))


def auc(labels, predictions, weights=None, num_thresholds=200, metrics_collections=None,
        updates_collections=None, curve="ROC", name=None, summation_method="trapezoidal"):
    """Area under the ROC (or PR) curve over every batch added so far, approximated at
    `num_thresholds` thresholds as TF1's tf.metrics.auc does; predictions are probabilities
    in [0, 1], labels 0/1 (or booleans). Returns (auc, update_op)."""
    if curve not in CURVES:
        raise ValueError(f"auc: curve must be one of {', '.join(CURVES)}, got {curve!r}")
    if summation_method not in SUMMATIONS:
        raise ValueError(f"auc: summation_method must be one of {', '.join(SUMMATIONS)}, "
                         f"got {summation_method!r}")
    if int(num_thresholds) < 2:
        raise ValueError(f"auc: num_thresholds must be at least 2, got {num_thresholds}")
    _refuse_collections("auc", metrics_collections, updates_collections)
    with name_scope(name or "auc"):
        labels, predictions = convert_to_tensor(labels), convert_to_tensor(predictions)
        counts = _local(np.zeros((4, int(num_thresholds))), "confusion_counts")
        batch = _Confusion(labels, predictions, _weights_like(predictions, weights),
                           thresholds(int(num_thresholds)))
        update = counts.assign_add(batch)
        return (_AucValue(counts, curve, summation_method, name="value"),
                _AucValue(update, curve, summation_method, name="update_op"))


def mean(values, weights=None, metrics_collections=None, updates_collections=None, name=None):
    """The (weighted) mean of every value added so far. Returns (mean, update_op)."""
    _refuse_collections("mean", metrics_collections, updates_collections)
    with name_scope(name or "mean"):
        values = cast(convert_to_tensor(values), float64)
        weights = _weights_like(values, weights)
        total = _local(np.float64(0.0), "total")
        count = _local(np.float64(0.0), "count")
        add_total = total.assign_add(reduce_sum(values * weights))
        add_count = count.assign_add(reduce_sum(weights))
        value = cast(_safe_div(total, count), float32)
        update = cast(_safe_div(add_total, add_count), float32)
        return value, update


def accuracy(labels, predictions, weights=None, metrics_collections=None,
             updates_collections=None, name=None):
    """How often `predictions` equals `labels`, over every batch added so far. Returns
    (accuracy, update_op)."""
    with name_scope(name or "accuracy"):
        labels, predictions = convert_to_tensor(labels), convert_to_tensor(predictions)
        hits = cast(equal(predictions, cast(labels, predictions.dtype)), float64)
        return mean(hits, weights, metrics_collections, updates_collections, name="mean")


class _SafeDiv(Node):
    """a / b, and 0 where b is 0 (a metric over no values)."""

    def __init__(self, a, b, name=None):
        super().__init__((a, b), name=name or "safe_div", shape=(), dtype=np.dtype(np.float64))

    def forward(self, a, b):
        return np.float64(a / b) if b else np.float64(0.0)


def _safe_div(a, b):
    return _SafeDiv(a, b)


def _refuse_collections(what, metrics_collections, updates_collections):
    if metrics_collections or updates_collections:
        raise NotImplementedError(f"metrics.{what}: metrics_collections and "
                                  "updates_collections are not supported; use the returned "
                                  "(value, update_op)")


__all__ = ["accuracy", "auc", "mean"]
