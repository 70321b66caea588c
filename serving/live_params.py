"""Live parameters: a served model whose embedding tables and Variables follow a training
job's parameter servers instead of staying as they were exported.

`live_load_fn(load_fn, follower)` wraps the server's load_fn: every version it loads reads
its tables' rows from `follower` (a serving.param_follower.JobFollower, or anything with its
`lookup`, `dense` and `on_dense`) at each request, and its Variables' values as the follower
last received them. Rows reach a request as soon as the follower has applied the delta that
brought them; each version keeps its exported rows for a table the follower does not mirror
(yet, or at all), and its exported value for a Variable the job does not hold.
"""

import logging
import weakref

import numpy as np

from psflow.errors import InvalidArgumentError

log = logging.getLogger(__name__)


class LiveRows:
    """A table's row store (what a lookup calls) reading `follower`'s rows of table `name`,
    and `frozen`'s (the export's) while the follower has none of that table."""

    __slots__ = ("name", "follower", "frozen")

    def __init__(self, name, follower, frozen):
        self.name, self.follower, self.frozen = name, follower, frozen

    def read_rows(self, var, indices, train=False):
        indices = np.asarray(indices)
        rows = self.follower.lookup(self.name, indices.astype(np.int64, copy=False).reshape(-1))
        if rows is None:
            return self.frozen.read_rows(var, indices, train)
        return rows.reshape(indices.shape + rows.shape[1:])


class LiveModel:
    """Binds one loaded predictor to a follower: its tables read live rows from the moment
    it is made, and its Variables take the follower's values now and at each dense update."""

    def __init__(self, predictor, follower):
        self.model = getattr(predictor, "unbatched", predictor)  # under a batching wrapper
        self.follower = follower
        # Rows read over the network: a request may wait on a call, so it must never run in
        # the front's event loop (serving/front_loop.py), however quick the warm-up was.
        self.model.blocks = bool(getattr(follower, "remote", False))
        variables, tables = self.model.parameters()
        self.variable_names = sorted(variables)
        self.model.rebind(tables={name: LiveRows(name, follower, frozen)
                                  for name, frozen in tables.items()})
        self.refresh(strict=True)
        reference = weakref.ref(self)
        follower.on_dense(lambda: _refresh(reference))

    def refresh(self, strict=False):
        """Takes the follower's values of the model's Variables. A value of another shape
        than the export's is a model that does not match the job: InvalidArgumentError when
        `strict` (at load: the version fails to load), else logged and skipped."""
        values = {}
        for name in self.variable_names:
            value = self.follower.dense(name)
            if value is not None:
                values[name] = value
        if not values:
            return
        try:
            self.model.rebind(variables=values)
        except InvalidArgumentError as exc:
            if strict:
                raise InvalidArgumentError(f"the followed job's variables do not fit "
                                           f"{self.model.export_dir}: {exc}") from None
            log.warning("dense update not taken by %s: %s", self.model.export_dir, exc)


def _refresh(reference):
    """A follower's dense-update callback: False once the model is gone (unloaded), so the
    follower drops it."""
    model = reference()
    if model is None:
        return False
    model.refresh()
    return True


def live_load_fn(load_fn, follower):
    """A load_fn whose predictors read their parameters live from `follower`."""
    def load(export_dir, signature=None, **kwargs):
        if signature is not None:
            kwargs["signature"] = signature
        predictor = load_fn(export_dir, **kwargs)
        predictor.live_model = LiveModel(predictor, follower)  # lives as long as the version
        return predictor
    return load
