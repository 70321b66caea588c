"""Gray release: requests that name no version and no label are split by weight between a
model's version labels, as a small YAML file of psflow's own (`--traffic_split_file`) says:

    ctr: {stable: 90, canary: 10}
    rank: {stable: 1}

The choice is a smooth weighted round robin (nginx's): deterministic, exact over every run of
sum(weights) requests, and interleaved rather than in blocks, so a canary sees its share of
the traffic from the first requests on. The file is re-read when its modification time
changes; a bad file is refused at start and, while serving, logged while the last good split
stays.
"""

import logging
import os
import threading

import yaml

from psflow.errors import InvalidArgumentError

log = logging.getLogger(__name__)


class WeightedChoice:
    """Smooth weighted round robin over [(label, weight)]."""

    def __init__(self, weights):
        self.weights = [(label, weight) for label, weight in weights if weight > 0]
        self._total = sum(weight for _, weight in self.weights)
        self._current = [0] * len(self.weights)
        self._lock = threading.Lock()

    def next(self):
        with self._lock:
            best = 0
            for i, (_, weight) in enumerate(self.weights):
                self._current[i] += weight
                if self._current[i] > self._current[best]:
                    best = i
            self._current[best] -= self._total
            return self.weights[best][0]


def parse_traffic_split(text, where="the traffic split", labels_of=None):
    """{model: [(label, weight)]} of the file's text; InvalidArgumentError naming `where` for
    anything malformed. `labels_of(model)` (when given) returns the model's version labels,
    or None for a model not served; a split naming either is refused."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidArgumentError(f"{where}: not YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidArgumentError(f"{where}: expected a mapping model -> {{label: weight}}, "
                                   f"got {type(data).__name__}")
    splits = {}
    for model, weights in data.items():
        if not isinstance(model, str) or not isinstance(weights, dict) or not weights:
            raise InvalidArgumentError(f"{where}: model {model!r} needs a mapping "
                                       f"{{label: weight}}, got {weights!r}")
        known = labels_of(model) if labels_of is not None else None
        if labels_of is not None and known is None:
            raise InvalidArgumentError(f"{where}: model '{model}' is not served")
        pairs = []
        for label, weight in weights.items():
            if not isinstance(label, str) or not label:
                raise InvalidArgumentError(f"{where}: model '{model}': label {label!r} is not "
                                           "a name")
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
                raise InvalidArgumentError(f"{where}: model '{model}' label '{label}': the "
                                           f"weight must be a non-negative integer, not "
                                           f"{weight!r}")
            if known is not None and label not in known:
                raise InvalidArgumentError(f"{where}: model '{model}' has no version label "
                                           f"'{label}'; its labels are {sorted(known)}")
            pairs.append((label, weight))
        if sum(weight for _, weight in pairs) <= 0:
            raise InvalidArgumentError(f"{where}: model '{model}': the weights sum to 0")
        splits[model] = pairs
    return splits


class TrafficSplit:
    """The split of `path`, re-read every `poll_wait_seconds` when the file changed.

    `labels_of(model)`: the model's version labels (None: not served), checked on every read.
    """

    def __init__(self, path, labels_of=None, poll_wait_seconds=1.0):
        self.path = path
        self._labels_of = labels_of
        self.poll_wait_seconds = poll_wait_seconds
        self._choices = {}
        self._mtime = None
        self._stop = threading.Event()
        self._thread = None
        self.reload(strict=True)

    def _read(self):
        try:
            mtime = os.stat(self.path).st_mtime_ns
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise InvalidArgumentError(f"cannot read traffic split {self.path}: {exc}") from None
        return mtime, parse_traffic_split(text, self.path, self._labels_of)

    def reload(self, strict=False, force=False):
        """Reads the file if it changed (or if `force`: the models' labels changed); True when
        a new split was taken. A bad file raises InvalidArgumentError when `strict`, else is
        logged and the last good split stays."""
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except OSError as exc:
            if strict:
                raise InvalidArgumentError(
                    f"cannot read traffic split {self.path}: {exc}") from None
            mtime = None
        if mtime is not None and mtime == self._mtime and not force:
            return False
        try:
            mtime, splits = self._read()
        except InvalidArgumentError as exc:
            if strict:
                raise
            if force or mtime != self._mtime:
                log.error("%s; keeping the last good traffic split", exc)
                self._mtime = mtime
            return False
        self._mtime = mtime
        self._choices = {model: WeightedChoice(pairs) for model, pairs in splits.items()}
        log.info("traffic split from %s: %s", self.path, splits)
        return True

    def label_for(self, model):
        """The label a request to `model` naming no version goes to (None: no split)."""
        choice = self._choices.get(model)
        return choice.next() if choice is not None else None

    def start(self):
        if self.poll_wait_seconds > 0:
            self._thread = threading.Thread(target=self._run, name="traffic-split",
                                            daemon=True)
            self._thread.start()

    def _run(self):
        while not self._stop.wait(self.poll_wait_seconds):
            try:
                self.reload()
            except Exception:  # the split outlives any one bad look at the disk
                log.exception("reading %s failed", self.path)

    def stop(self, timeout=None):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
