"""A predict server's client of the serving parameter tier: `RemoteParams` reads table rows and
Variables' values from `psflow-params` servers (or any server of psflow's ParameterServer
service that answers PullRows and Pull: a training parameter server too), one shard at a
time, each shard on R replicas.

- A request's lookup of a table is one PullRows per shard holding its keys (keys go to shards
  as workers place them: psflow.key_index.shard_of_keys).
- A replica that fails (down, refusing, or slower than its share of the deadline) is set aside
  for `retry_after` seconds and the call goes to the shard's next replica, within the
  request's `deadline`; a lookup fails (UnavailableError naming the shard) only when every
  replica of a shard failed within it.
- Hot rows are cached for `cache_ttl` seconds (serving/row_cache.py).
- Variables are read once when a model first asks for them, then polled every
  `dense_period` seconds; `on_dense` callbacks run when a value changed.

It answers what serving/live_params.py asks of a follower (`lookup`, `dense`, `on_dense`).
"""

import logging
import threading
import time

import grpc
import numpy as np

from psflow.errors import DeadlineExceededError, NotFoundError, PsflowError, UnavailableError
from psflow.key_index import shard_of_keys
from psflow.proto import codec, wire
from psflow.proto import psflow_pb2 as pb
from psflow.serving.row_cache import RowCache
from psflow.transport import auth

log = logging.getLogger(__name__)

RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
           grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED,
           grpc.StatusCode.ABORTED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


class _Replica:
    def __init__(self, address, token):
        self.address = address
        self.metadata = auth.call_metadata(token)
        self.channel = auth.open_channel(address, codec.CHANNEL_OPTIONS + [
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ])
        self.pull = self.channel.unary_unary(
            "/psflow.ParameterServer/Pull", request_serializer=pb.PullRequest.SerializeToString,
            response_deserializer=wire.pull_reply)
        self.pull_rows = self.channel.unary_unary(
            "/psflow.ParameterServer/PullRows",
            request_serializer=pb.PullRowsRequest.SerializeToString,
            response_deserializer=wire.pull_reply)
        self.down_until = 0.0


class Shard:
    """The replicas of one shard; `call` tries them in turn within a deadline."""

    def __init__(self, index, addresses, token, retry_after):
        if not addresses:
            raise ValueError(f"shard {index} has no replica address")
        self.index = index
        self.replicas = [_Replica(a, token) for a in addresses]
        self.retry_after = retry_after
        self._next = 0
        self.failovers = 0

    def _order(self):
        """Replicas to try: the healthy ones from the preferred one on, then those set
        aside."""
        now = time.monotonic()
        n = len(self.replicas)
        ring = [self.replicas[(self._next + i) % n] for i in range(n)]
        return [r for r in ring if r.down_until <= now] + [r for r in ring if r.down_until > now]

    def call(self, method, request, deadline):
        """The answer of the first replica to answer within `deadline`: each gets its share
        of the time left; one that fails with a status worth retrying is set aside and the
        next is tried."""
        tried = []
        for replica in self._order():
            left = len(self.replicas) - len(tried)
            share = max((deadline - time.monotonic()) / left, 0.001)
            tried.append(replica)
            try:
                reply = getattr(replica, method)(request, timeout=share,
                                                 metadata=replica.metadata)
            except grpc.RpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.NOT_FOUND:
                    raise NotFoundError(exc.details()) from None
                if code not in RETRIED:
                    raise UnavailableError(f"shard {self.index} replica {replica.address}: "
                                           f"{code.name}: {exc.details()}") from None
                replica.down_until = time.monotonic() + self.retry_after
                log.info("shard %d replica %s failed (%s); trying another", self.index,
                         replica.address, code.name)
                if time.monotonic() >= deadline:
                    break
                self.failovers += 1
                continue
            self._next = self.replicas.index(replica)
            return reply
        raise UnavailableError(f"no replica of shard {self.index} answered within the "
                               f"deadline; tried {[r.address for r in tried]}")



class _Lookup:
    """One request's lookup of one table on one shard, waiting to go in a call."""

    __slots__ = ("name", "keys", "rows", "error", "state", "wake")

    def __init__(self, name, keys):
        self.name, self.keys = name, keys
        self.rows = self.error = None
        self.state = "waiting"  # -> "sent", "done" or "lead" (it sends the next call)
        self.wake = threading.Event()

    def answer(self):
        if self.error is not None:
            raise self.error
        return self.rows


class Coalescer:
    """The lookups of one shard by concurrent requests, sent together: while a call to the
    shard is under way, the lookups that arrive wait, and the first of them sends the next
    call with all of them (PullRows carries a KeySelection each), so a loaded predict server
    makes far fewer calls than it has lookups."""

    def __init__(self, shard):
        self.shard = shard
        self._lock = threading.Lock()
        self._waiting = []
        self._busy = False
        self.calls = self.lookups = 0

    def rows(self, name, keys, deadline):
        lookup = _Lookup(name, keys)
        with self._lock:
            self._waiting.append(lookup)
            if not self._busy:
                self._busy = True
                lookup.state = "lead"
        while lookup.state != "lead":
            if not lookup.wake.wait(max(deadline - time.monotonic(), 0)):
                with self._lock:
                    if lookup.state == "waiting":
                        self._waiting.remove(lookup)
                        raise UnavailableError(f"shard {self.shard.index} did not answer "
                                               "within the deadline")
                lookup.wake.wait()  # sent meanwhile: its call ends within the deadline
            lookup.wake.clear()
            if lookup.state == "done":
                return lookup.answer()
        with self._lock:
            batch, self._waiting = self._waiting, []
            for sent in batch:
                sent.state = "sent"
        self._send(batch, deadline)
        with self._lock:
            if self._waiting:  # the first of those who came meanwhile sends the next call
                self._waiting[0].state = "lead"
                self._waiting[0].wake.set()
            else:
                self._busy = False
        return lookup.answer()

    def _send(self, batch, deadline):
        self.calls += 1
        self.lookups += len(batch)
        request = pb.PullRowsRequest(keys=[pb.KeySelection(
            name=b.name, keys=codec.encode(b.keys), train=False) for b in batch])
        try:
            values = self.shard.call("pull_rows", request, deadline).values
            for b, value in zip(batch, values, strict=True):
                b.rows = value.array
        except NotFoundError as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:  # a table some lookup names is not there: each on its own
                for b in batch:
                    b.state = "sent"
                    self._send([b], deadline)
                return
        except PsflowError as exc:
            for b in batch:
                b.error = exc
        for b in batch:
            b.state = "done"
            b.wake.set()


class RemoteParams:
    """Rows and Variables of a model from the serving parameter tier (see the module
    docstring). `shards`: per shard, its replicas' addresses, in the job's shard order."""

    remote = True  # its lookups make calls (serving/live_params.py)

    def __init__(self, shards, token=None, deadline=0.1, cache_rows=100_000, cache_ttl=0.25,
                 dense_period=1.0, retry_after=2.0):
        token = auth.token_from_env() if token is None else token
        self.shards = [Shard(i, list(a), token, retry_after) for i, a in enumerate(shards)]
        self._coalescers = [Coalescer(shard) for shard in self.shards]
        self.deadline = float(deadline)
        self.cache = RowCache(cache_rows, cache_ttl)
        self.dense_period = float(dense_period)
        self._unknown = {}  # table name -> until when it is taken as absent
        self._dense = {}  # variable name -> its value, or None: no shard holds it
        self._callbacks = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poller = None

    # -- tables ---------------------------------------------------------------------------
    def lookup(self, name, keys):
        """Rows (len(keys), dim) of table `name` for int64 `keys` (zeros for a key without a
        row), or None when the tier holds no such table."""
        keys = np.asarray(keys, dtype=np.int64).reshape(-1)
        if not keys.size or self._unknown.get(name, 0) > time.monotonic():
            return None  # (no keys: the caller's own rows give the shape)
        unique, inverse = np.unique(keys, return_inverse=True)
        cached = self.cache.get(name, unique)
        if cached is not None and cached[1].all():
            return cached[0][inverse.reshape(-1)]
        wanted = unique if cached is None else unique[~cached[1]]
        try:
            fetched = self._fetch(name, wanted)
        except NotFoundError:
            self._unknown[name] = time.monotonic() + 5.0
            return None
        self.cache.put(name, wanted, fetched)
        if cached is None:
            rows = fetched
        else:
            rows = cached[0]
            rows[~cached[1]] = fetched
        return rows[inverse.reshape(-1)]

    def _fetch(self, name, keys):
        """Rows of distinct `keys` from their shards, one shard after the other (blocking
        calls, no futures), each lookup in a call with the lookups of other requests to the
        same shard (Coalescer)."""
        deadline = time.monotonic() + self.deadline
        owner = shard_of_keys(keys, len(self.shards))
        rows = None
        for shard in self.shards:
            mine = np.flatnonzero(owner == shard.index)
            if not mine.size:
                continue
            part = self._coalescers[shard.index].rows(name, keys[mine], deadline)
            if rows is None:
                rows = np.zeros((keys.size,) + part.shape[1:], part.dtype)
            rows[mine] = part
        return rows

    # -- variables ------------------------------------------------------------------------
    def dense(self, name):
        """The value of Variable `name` (its parts "<name>/part_<k>" put together, as a
        partitioned Variable's are), or None when no shard holds it."""
        with self._lock:
            if name in self._dense:
                return self._dense[name]
        value = self._read_dense(name)
        with self._lock:
            self._dense[name] = value
        self._start_poller()
        return value

    def on_dense(self, callback):
        """Calls `callback()` after Variables changed; dropped once it returns False."""
        with self._lock:
            self._callbacks.append(callback)

    def _read_dense(self, name):
        deadline = time.monotonic() + max(self.deadline, 5.0)
        found = self._pull_anywhere([name], deadline)
        if name in found:
            return found[name]
        parts = []
        while True:
            part = f"{name}/part_{len(parts)}"
            found = self._pull_anywhere([part], deadline)
            if part not in found:
                break
            parts.append(found[part])
        return np.concatenate(parts) if parts else None

    def _pull_anywhere(self, names, deadline):
        """{name: value} of the names some shard holds."""
        out = {}
        for shard in self.shards:
            for name in names:
                if name in out:
                    continue
                try:
                    reply = shard.call("pull", pb.PullRequest(names=[name]), deadline)
                except NotFoundError:
                    continue
                out[name] = reply.values[0].array
        return out

    def _start_poller(self):
        with self._lock:
            if self._poller is not None or self.dense_period <= 0:
                return
            self._poller = threading.Thread(target=self._poll, name="dense-poll", daemon=True)
            self._poller.start()

    def _poll(self):
        while not self._stop.wait(self.dense_period):
            with self._lock:
                names = list(self._dense)
            changed = False
            for name in names:
                try:
                    value = self._read_dense(name)
                except (UnavailableError, DeadlineExceededError) as exc:
                    log.warning("variable %s not refreshed: %s", name, exc)
                    continue
                with self._lock:
                    held = self._dense.get(name)
                    # values are compared: a version counts updates, not assignments
                    if (held is None) != (value is None) or (
                            value is not None and not np.array_equal(held, value)):
                        self._dense[name] = value
                        changed = True
            if changed:
                with self._lock:
                    callbacks = list(self._callbacks)
                kept = [c for c in callbacks if c() is not False]
                with self._lock:
                    self._callbacks = [c for c in self._callbacks
                                       if c in kept or c not in callbacks]

    def close(self):
        self._stop.set()
        for shard in self.shards:
            for replica in shard.replicas:
                replica.channel.close()
