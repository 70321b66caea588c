"""What a shard publishes to the serving processes that follow it (the Follow rpc): every
`publish_period`, one delta of its tables' changes since the last (`changes_since`, see
psflow.table_changes) and, every `dense_period`, its dense variables' values; to a follower
that joins, a catch-up from its position or a snapshot.

Each follower has a queue bounded in bytes: a follower that falls behind is dropped (its stream
ends asking it to resync) and training never waits for it. Without followers the publishing
thread sleeps and nothing is read. A delta is built (and serialized) once for every follower.
"""

import collections
import logging
import secrets
import threading
import time

import numpy as np

from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb
from psflow.table_changes import ChangesLost

log = logging.getLogger(__name__)

CHUNK_BYTES = 4 * 1024 * 1024  # about the most a message of an update carries


class Follower:
    """One follower's queue of serialized ParameterUpdate messages, at most `limit` bytes
    waiting; `dropped` says why it was dropped (None while it follows)."""

    def __init__(self, limit):
        self.limit = int(limit)
        self.waiting = collections.deque()
        self.bytes = 0
        self.dropped = None
        self.closed = False
        self._ready = threading.Condition()

    def offer(self, messages):
        """Queues an update's messages; False (and the follower dropped) if they do not fit."""
        size = sum(len(m) for m in messages)
        with self._ready:
            if self.dropped is not None or self.closed:
                return False
            if self.bytes and self.bytes + size > self.limit:
                self.dropped = (f"the follower fell {self.bytes + size} bytes behind (at most "
                                f"{self.limit} are kept); resync")
                self.waiting.clear()
                self._ready.notify_all()
                return False
            self.waiting.extend(messages)
            self.bytes += size
            self._ready.notify_all()
            return True

    def drop(self, reason):
        with self._ready:
            if self.dropped is None:
                self.dropped = reason
            self._ready.notify_all()

    def close(self):
        """The stream is over (the follower went away or the server stops)."""
        with self._ready:
            self.closed = True
            self._ready.notify_all()

    def take(self, timeout):
        """The next message, or None after `timeout` seconds without one, or once dropped
        or closed (see `dropped`, `closed`)."""
        with self._ready:
            if not self.waiting and self.dropped is None and not self.closed:
                self._ready.wait(timeout)
            if self.dropped is not None or self.closed or not self.waiting:
                return None
            message = self.waiting.popleft()
            self.bytes -= len(message)
            return message


class Publisher:
    """Publishes a ShardStore's changes to its followers (see the module's docstring)."""

    def __init__(self, store, publish_period=0.2, dense_period=5.0, buffer_bytes=256 << 20,
                 chunk_bytes=CHUNK_BYTES):
        if publish_period <= 0 or dense_period <= 0 or buffer_bytes <= 0:
            raise ValueError("the publish period, the dense period and the follower buffer "
                             "must be positive")
        self.store = store
        self.publish_period = float(publish_period)
        self.dense_period = float(dense_period)
        self.buffer_bytes = int(buffer_bytes)
        self.chunk_bytes = int(chunk_bytes)
        self.incarnation = secrets.randbits(64) or 1
        self.published = 0  # the sequence every follower's deltas are complete up to
        self.stats = {"deltas": 0, "snapshots": 0, "catch_ups": 0, "dropped": 0, "bytes": 0}
        self._followers = set()
        self._lock = threading.Lock()  # publishing and joining, one at a time
        self._wake = threading.Condition(self._lock)
        self._dense_due = 0.0
        self._dense_sent = {}  # dense variable -> the _dense_stamp the last delta carried
        self._stopped = False
        self._thread = None

    @property
    def clock(self):
        return self.store.tables.clock

    def start(self):
        self._thread = threading.Thread(target=self._run, name=f"ps{self.store.shard}-publish",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Ends every follower's stream and the publishing thread."""
        with self._lock:
            self._stopped = True
            followers, self._followers = list(self._followers), set()
            self._wake.notify_all()
        for follower in followers:
            follower.close()

    @property
    def followers(self):
        with self._lock:
            return len(self._followers)

    # -- joining -----------------------------------------------------------------------------
    def follow(self, after_seq=0, incarnation=0):
        """A new Follower, and the messages of its catch-up to send before its queue (an
        iterable; a snapshot's are read and made as they are sent): a delta from `after_seq`
        when the shard can continue from there, a snapshot otherwise. Every delta published
        after this call is in its queue."""
        follower = Follower(self.buffer_bytes)
        with self._lock:
            if self._stopped:
                raise RuntimeError("the shard is stopping")
            if not self._followers:  # nothing was published while nobody followed
                self.published = self.clock.value
            start = self.published
            self._followers.add(follower)
            self._wake.notify_all()
        catch_up = None
        if incarnation == self.incarnation and 0 < after_seq <= start:
            try:  # read now: ChangesLost turns it into a snapshot
                catch_up = list(self._update(after_seq, start, dense=True,
                                             snapshot=False))
                self.stats["catch_ups"] += 1
            except ChangesLost:
                catch_up = None
        if catch_up is None:
            catch_up = self._update(0, start, dense=True, snapshot=True)
            self.stats["snapshots"] += 1
        return follower, catch_up

    def leave(self, follower):
        follower.close()
        with self._lock:
            self._followers.discard(follower)

    # -- publishing --------------------------------------------------------------------------
    def _run(self):
        while True:
            with self._lock:
                while not self._followers and not self._stopped:
                    self._wake.wait()
                if self._stopped:
                    return
            time.sleep(self.publish_period)
            try:
                self.publish()
            except Exception:  # noqa: BLE001 -- the shard serves on; followers resync
                log.exception("shard %d could not publish its changes", self.store.shard)
                self._drop_all("the shard could not publish its changes; resync")

    def publish(self):
        """Sends one delta to every follower (if there is anything to send): the tables'
        changes since the last and, when due, the dense variables. Returns its messages."""
        with self._lock:
            if not self._followers:
                return []
            now = time.monotonic()
            dense = set()
            if now >= self._dense_due:  # the variables changed since the last time
                self._dense_due = now + self.dense_period
                dense = {name for name, var in list(self.store.variables.held.items())
                         if var.value is not None and
                         self._dense_sent.get(name) != self._dense_stamp(var)}
            upto = self.clock.value
            if upto == self.published and not dense:
                return []
            try:
                messages = list(self._update(self.published, upto, dense=dense,
                                             snapshot=False))
            except ChangesLost as exc:
                self._drop_locked(f"{exc}; resync")
                return []
            self.published = upto
            self.stats["deltas"] += 1
            self.stats["bytes"] += sum(len(m) for m in messages)
            for follower in list(self._followers):
                if not follower.offer(messages):
                    self._followers.discard(follower)
                    if follower.dropped is not None:
                        self.stats["dropped"] += 1
                        log.info("shard %d dropped a follower: %s", self.store.shard,
                                 follower.dropped)
            return messages

    def _drop_all(self, reason):
        with self._lock:
            self._drop_locked(reason)

    def _drop_locked(self, reason):
        for follower in self._followers:
            follower.drop(reason)
        self.stats["dropped"] += len(self._followers)
        self._followers = set()

    # -- building updates --------------------------------------------------------------------
    def _update(self, since, upto, dense, snapshot):
        """The serialized messages of an update from `since` to `upto` (see ParameterUpdate),
        made as they are consumed: each table's changes since `since` (a snapshot's a chunk of
        rows at a time, see EmbeddingTable.changes_in_chunks), then the dense values."""
        header = dict(incarnation=self.incarnation, shard=self.store.shard, from_seq=since,
                      to_seq=upto, snapshot=snapshot)
        current, size = pb.ParameterUpdate(**header), 0
        for nbytes, fill in self._parts(since, dense, snapshot):
            if size and size + nbytes > self.chunk_bytes:
                yield current.SerializeToString()
                current, size = pb.ParameterUpdate(**header), 0
            fill(current)
            size += nbytes
        current.last = True
        yield current.SerializeToString()

    def _dense_stamp(self, var):
        """What tells a dense variable's value from its last: its updates, and assignments."""
        return var.version, self.store.variables.writes

    def _parts(self, since, dense, snapshot):
        """(bytes, a function that adds a TableUpdate or a NamedTensor to a ParameterUpdate in
        place) of each part of an update; `dense`: True for every dense variable, else the
        names of those to send."""
        for name, held in sorted(self.store.tables.held.items()):
            row_bytes = held.dim * held.dtype.itemsize + 8
            step = max(1, self.chunk_bytes // row_bytes)
            sent = False
            for changes in held.table.changes_in_chunks(held.lock, since, step):
                for start in range(0, changes.keys.size, step):
                    keys = changes.keys[start:start + step]
                    yield keys.size * row_bytes, _table_part(
                        name, held, keys, changes.values[start:start + step],
                        changes.removed if start == 0 else None)
                    sent = True
                if not sent and (snapshot or changes.removed.size):
                    yield changes.removed.size * 8, _table_part(
                        name, held, changes.keys, changes.values, changes.removed)
                    sent = True
        for name, var in sorted(self.store.variables.held.items()):
            if dense is not True and name not in dense:
                continue
            with var.lock:
                if var.value is None:
                    continue
                value, version = var.value.copy(), var.version
                stamp = self._dense_stamp(var)
            if dense is not True:
                self._dense_sent[name] = stamp
            yield value.nbytes, _dense_part(name, version, value)


def _table_part(name, held, keys, values, removed):
    def fill(update):
        part = update.tables.add(name=name, dim=held.dim, dtype=held.dtype.name)
        codec.encode(np.ascontiguousarray(keys, dtype=np.int64), part.keys)
        codec.encode(np.ascontiguousarray(values), part.values)
        codec.encode(np.zeros(0, np.int64) if removed is None else removed, part.removed)
    return fill


def _dense_part(name, version, value):
    def fill(update):
        codec.encode(value, update.dense.add(name=name, version=version).tensor)
    return fill
