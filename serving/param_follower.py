"""Following a training job's parameters: a mirror of each parameter-server shard, kept fresh by
the shard's Follow stream (see psflow.proto's ParameterUpdate).

`ShardFollower` mirrors one shard: it applies a snapshot, then the deltas in order, each whole
under its lock, so a reader sees the state before or after a delta, never half of one. A gap
(a delta that does not start where the mirror is, another incarnation of the shard, a stream
that ends or breaks) makes it follow again from its position; the shard answers with a
catch-up or, when it cannot continue from there, a snapshot that replaces the mirror at once.
Tables are kept in psflow's own table storage (serving.mirror_table), dense variables as
arrays.

`JobFollower` follows every shard of a job and answers what a served model asks of its
parameters (serving.live_params): `lookup(table, keys)` (each key from the shard its hash
picks, as workers place them), `dense(name)` (a variable split into "<name>/part_<k>" parts is
put back together) and `on_dense(callback)` (called after dense values arrived).
"""

import logging
import re
import threading
import time

import grpc
import numpy as np

from psflow.errors import NotFoundError
from psflow.key_index import shard_of_keys
from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb
from psflow.transport import auth
from .mirror_table import MirrorTable

log = logging.getLogger(__name__)

FOLLOW_METHOD = "/psflow.ParameterServer/Follow"


class _Gap(Exception):
    """The stream does not continue the mirror: follow again."""


class _ChainTail:
    """The tail of shard `shard`'s chain, as the chain master at `master` names it."""

    def __init__(self, master, shard, token):
        self.shard, self._metadata = shard, auth.call_metadata(token)
        self._channel = auth.open_channel(master, codec.MASTER_CHANNEL_OPTIONS)
        self._get = self._channel.unary_unary(
            "/psflow.ChainMaster/GetChain",
            request_serializer=pb.GetChainRequest.SerializeToString,
            response_deserializer=pb.ChainConfig.FromString)

    def tail(self):
        """The tail's address; None when the master does not answer."""
        try:
            chain = self._get(pb.GetChainRequest(shard=self.shard), timeout=2.0,
                              metadata=self._metadata)
        except grpc.RpcError:
            return None
        return chain.replicas[-1] if chain.replicas else None

    def close(self):
        self._channel.close()


class ShardFollower:
    """A mirror of one parameter-server shard at `address` (see the module's docstring).
    `start()` follows in a thread; `wait_synced()` waits for the first snapshot. `token`:
    the job's token (default: PSFLOW_AUTH_TOKEN); `retry_s`: the pause before following
    again after the stream ended or failed; `on_dense`: called (in the following thread)
    after an update that carried dense values was applied."""

    def __init__(self, address, token=None, retry_s=0.2, channel_options=None, on_dense=None,
                 chain_master=None, shard=0):
        self.address = address
        # A replicated shard: the chain master names its replicas; the mirror follows the
        # tail (which holds every acknowledged write) and, when the stream fails, the chain's
        # tail then (a new replica: a snapshot, since its stream is another incarnation).
        self.chain_master, self.chain_shard = chain_master, int(shard)
        self.token = auth.token_from_env() if token is None else token
        self.retry_s = float(retry_s)
        self.channel_options = codec.CHANNEL_OPTIONS if channel_options is None \
            else channel_options
        self.incarnation = 0  # of the shard the mirror follows
        self.seq = 0  # the sequence the mirror is complete up to
        self.shard = None
        self.stats = {"snapshots": 0, "deltas": 0, "resyncs": 0, "messages": 0}
        self.applied_at = None  # time.time() when the last update was applied
        self.on_dense = on_dense
        self._tables = {}  # name -> MirrorTable
        self._dense = {}  # name -> array
        self._lock = threading.Lock()  # an update is applied whole under it; reads take it
        self._synced = threading.Event()
        self._stopping = threading.Event()
        self._call = None
        self._thread = None
        self.last_error = None

    # -- following ---------------------------------------------------------------------------
    def start(self):
        """Starts following (once; again does nothing); returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"follow-{self.address}",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self):
        self._stopping.set()
        call = self._call
        if call is not None:
            call.cancel()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wait_synced(self, timeout=None):
        """Blocks until the mirror holds a snapshot (True), or `timeout` seconds (False)."""
        return self._synced.wait(timeout)

    def drop_connection(self):
        """Ends the current stream as a network failure would (the follower follows again)."""
        call = self._call
        if call is not None:
            call.cancel()

    def _run(self):
        channel, follow = None, None
        master = _ChainTail(self.chain_master, self.chain_shard, self.token) \
            if self.chain_master else None
        try:
            while not self._stopping.is_set():
                address = master.tail() or self.address if master else self.address
                if channel is None or address != self.address:
                    if channel is not None:
                        channel.close()
                        log.info("following shard %d's chain: now %s", self.chain_shard,
                                 address)
                    self.address = address
                    channel = auth.open_channel(address, self.channel_options)
                    follow = channel.unary_stream(
                        FOLLOW_METHOD, request_serializer=pb.FollowRequest.SerializeToString,
                        response_deserializer=pb.ParameterUpdate.FromString)
                self._follow_once(follow, wait_for_ready=master is None)
                self._stopping.wait(self.retry_s)
        finally:
            if channel is not None:
                channel.close()
            if master is not None:
                master.close()

    def _follow_once(self, follow, wait_for_ready):
        """Follows until the stream ends or fails (a replica of a chain that is not up fails
        at once: the chain's tail is asked for again)."""
        request = pb.FollowRequest(after_seq=self.seq, incarnation=self.incarnation)
        try:
            self._call = follow(request, metadata=auth.call_metadata(self.token),
                                wait_for_ready=wait_for_ready)
            self._consume(self._call)
        except _Gap as exc:
            log.info("following %s: %s; resyncing", self.address, exc)
            self.seq = 0  # a snapshot next
            self.stats["resyncs"] += 1
        except grpc.RpcError as exc:
            self.last_error = f"{exc.code().name}: {exc.details()}"
            if not self._stopping.is_set():
                log.info("following %s: %s", self.address, self.last_error)
                self.stats["resyncs"] += 1
        except Exception as exc:  # noqa: BLE001 -- an update it cannot apply
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("following %s: an update could not be applied; resyncing",
                          self.address)
            self.seq = 0
            self.stats["resyncs"] += 1
        finally:
            if self._call is not None:
                self._call.cancel()
            self._call = None

    def _consume(self, stream):
        pending = []
        for message in stream:
            self.stats["messages"] += 1
            if pending:
                first = pending[0]
                if (message.incarnation, message.from_seq, message.to_seq, message.snapshot) \
                        != (first.incarnation, first.from_seq, first.to_seq, first.snapshot):
                    raise _Gap("an update's messages disagree on their sequence numbers")
            elif not message.snapshot and (message.incarnation != self.incarnation or
                                           message.from_seq != self.seq):
                raise _Gap(f"a delta from {message.from_seq} of incarnation "
                           f"{message.incarnation:x}, the mirror is at {self.seq} of "
                           f"{self.incarnation:x}")
            pending.append(message)
            if message.last:
                self._apply(pending)
                pending = []

    # -- applying ----------------------------------------------------------------------------
    def _apply(self, messages):
        first = messages[0]
        if first.snapshot:
            tables, dense = {}, {}
            for message in messages:  # built aside, swapped in at once
                self._apply_message(message, tables, dense)
            with self._lock:
                self._tables, self._dense = tables, dense
                self._set_position(first)
            self.stats["snapshots"] += 1
            self._synced.set()
        else:
            with self._lock:
                tables, dense = self._tables, self._dense
                for message in messages:
                    self._apply_message(message, tables, dense)
                self._set_position(first)
            self.stats["deltas"] += 1
        if self.on_dense is not None and any(m.dense for m in messages):
            self.on_dense()

    def _set_position(self, update):
        self.incarnation, self.seq, self.shard = update.incarnation, update.to_seq, update.shard
        self.applied_at = time.time()

    @staticmethod
    def _apply_message(message, tables, dense):
        for part in message.tables:
            table = tables.get(part.name)
            if table is None:
                table = tables[part.name] = MirrorTable(part.name, part.dim, part.dtype)
            removed = codec.decode(part.removed, f"removed keys of {part.name!r}")
            if removed.size:
                table.remove(removed)
            keys = codec.decode(part.keys, f"keys of {part.name!r}")
            if keys.size:
                table.set(keys, codec.decode(part.values, f"rows of {part.name!r}"))
        for item in message.dense:
            dense[item.name] = np.array(codec.decode(item.tensor, f"value of {item.name!r}"))

    # -- reading -----------------------------------------------------------------------------
    def lookup(self, table, keys):
        """The rows of int64 `keys` in `table`, shape keys.shape + (dim,): zeros for keys
        without a row. NotFoundError if the shard holds no such table."""
        keys = np.asarray(keys)
        with self._lock:
            held = self._held(table)
            rows = held.lookup(keys.reshape(-1))
        return rows.reshape(keys.shape + (held.dim,))

    def has_table(self, table):
        with self._lock:
            return table in self._tables

    def table_dim(self, table):
        with self._lock:
            held = self._held(table)
            return held.dim, held.dtype

    def export(self, table):
        """(keys, rows) the mirror holds of `table`, sorted by key."""
        with self._lock:
            keys, values = self._held(table).export()
        order = np.argsort(keys)
        return keys[order], values[order]

    def dense(self, name):
        """A copy of dense variable (or part) `name`; NotFoundError if the shard has none."""
        with self._lock:
            value = self._dense.get(name)
            if value is None:
                raise NotFoundError(f"no dense variable {name!r} on the shard at "
                                    f"{self.address}")
            return value.copy()

    def dense_names(self):
        with self._lock:
            return sorted(self._dense)

    def table_names(self):
        with self._lock:
            return sorted(self._tables)

    def _held(self, table):
        held = self._tables.get(table)
        if held is None:
            raise NotFoundError(f"no embedding table {table!r} on the shard at {self.address} "
                                f"(it has {', '.join(sorted(self._tables)) or 'none'})")
        return held


_PART = re.compile(r"^(.*)/part_(\d+)$")


class JobFollower:
    """Mirrors of every shard of a job, `addresses` in task-index order, following from the
    moment it is made (see the module's docstring); `options` go to each ShardFollower.
    `wait_synced(timeout)` waits for every shard's first snapshot; `close()` stops."""

    def __init__(self, addresses, start=True, **options):
        if not addresses:
            raise ValueError("a job has at least one parameter server to follow")
        self.shards = [ShardFollower(address, on_dense=self._dense_arrived, **options)
                       for address in addresses]
        self._callbacks = []
        self._callbacks_lock = threading.Lock()
        if start:
            self.start()

    def start(self):
        for shard in self.shards:
            shard.start()
        return self

    def stop(self):
        for shard in self.shards:
            shard.stop()

    close = stop

    def wait_synced(self, timeout=None):
        """Whether every shard's mirror holds a snapshot within `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for shard in self.shards:
            left = None if deadline is None else max(deadline - time.monotonic(), 0)
            if not shard.wait_synced(left):
                return False
        return True

    def lookup(self, table, keys):
        """The rows of int64 `keys` in `table`, shape keys.shape + (dim,), each from the shard
        that owns the key (zeros for keys without a row), each shard's part read from one
        state of its mirror; None while some shard's mirror has no such table (not synced
        yet, or the job has none)."""
        keys = np.asarray(keys, dtype=np.int64)
        flat = keys.reshape(-1)
        if not all(s.has_table(table) for s in self.shards):
            return None
        dim, dtype = self.shards[0].table_dim(table)
        out = np.zeros((flat.size, dim), dtype=dtype)
        owner = shard_of_keys(flat, len(self.shards))
        for index in np.unique(owner).tolist():
            mine = np.flatnonzero(owner == index)
            out[mine] = self.shards[index].lookup(table, flat[mine])
        return out.reshape(keys.shape + (dim,))

    def dense(self, name):
        """The value of dense variable `name` (its parts "<name>/part_<k>" put back together
        by row), or None when the followed shards hold no such variable (or not all of its
        parts)."""
        for shard in self.shards:
            if name in shard.dense_names():
                return shard.dense(name)
        parts = {}
        for shard in self.shards:
            for held in shard.dense_names():
                match = _PART.match(held)
                if match and match.group(1) == name:
                    parts[int(match.group(2))] = shard.dense(held)
        if not parts or sorted(parts) != list(range(len(parts))):
            return None
        return np.concatenate([parts[k] for k in sorted(parts)], axis=0)

    def on_dense(self, callback):
        """Calls `callback()` after dense values arrived from a shard; dropped once it returns
        False."""
        with self._callbacks_lock:
            self._callbacks.append(callback)

    def _dense_arrived(self):
        with self._callbacks_lock:
            callbacks = list(self._callbacks)
        dropped = []
        for callback in callbacks:
            try:
                if callback() is False:
                    dropped.append(callback)
            except Exception:  # noqa: BLE001 -- one model's refresh must not stop following
                log.exception("a dense-update callback failed")
        if dropped:
            with self._callbacks_lock:
                self._callbacks = [c for c in self._callbacks if c not in dropped]
