"""The same-host lane: a worker and a parameter server on one host (every `launch` job) carry
the step's calls (Pull, PullRows, Push) over a local socket instead of gRPC.

Python's gRPC costs some hundred microseconds of interpreter time per call on each side
(a polling thread, a thread pool hand-off, the call's state objects); for a small model that is
most of a step. The lane is a Unix socket in Linux's abstract namespace (nothing in the file
system, gone with the process that bound it, reachable only from the same network namespace)
with one server thread per connection. A call is a frame: method, length, and the very bytes
gRPC would carry, written from the arrays' own memory and read into one buffer the arrays are
then views of, so the wire format, the handlers and their errors are gRPC's.

    request  := method (u8) | length (u64) | message
    reply    := status (u8, a grpc.StatusCode value, 0 = OK) | length (u64) | message or
                the error's text (utf-8)

A connection begins with MAGIC, the length of the job's token (u32) and the token; the server
answers with a status.

Large messages go through shared memory instead: the worker makes two memfds (anonymous memory
that vanishes with the last process holding it), a request region and a reply region, and
hands them to the server in an ATTACH frame (their sizes, the descriptors as SCM_RIGHTS). A
request of at least SHARED_MIN_BYTES is then copied into the request region and its frame
carries the SHARED bit and the length only; the server reads the message in place. A reply
that fits the reply region goes the same way, and the worker copies it out. Copying memory
costs a fraction of moving it through a socket (two kernel copies, in pieces). The server
uses a request's arrays only during the call: what it keeps longer (a sync step's pending
gradients) it copies first (see in_shared_memory). A worker regrows its regions for a larger
request or reply, in a new ATTACH. The server offers the lane in RegisterWorker's answer
(`lane`); the worker connects when it can and uses gRPC otherwise, or when the lane is busy
(another thread's call) or was lost (a failed call ends the lane; the next RegisterWorker
offers it again).
PSFLOW_LANE=0 turns it off on either side; PSFLOW_LANE_SHARED=0 keeps a worker's messages in
the socket.
"""

import array
import hmac
import logging
import mmap
import os
import secrets
import socket
import struct
import sys
import threading

import grpc
import numpy as np

from psflow import settings
from psflow.proto import codec

log = logging.getLogger(__name__)

METHODS = ("Pull", "PullRows", "Push")
MAGIC = b"psflow-lane/1\n"
_REQUEST = struct.Struct("<BQ")
_REPLY = struct.Struct("<BQ")
_HELLO = struct.Struct("<I")
_STATUS = {code.value[0]: code for code in grpc.StatusCode}
_MAX_TOKEN_BYTES = 4096
HELLO_TIMEOUT_S = 5.0
# Messages at least this large go through the shared-memory regions.
SHARED_MIN_BYTES = 64 << 10
_SHARED = 0x80  # the method's or status's bit for a message in shared memory
_ATTACH = 0x7F  # the method code of the frame that hands over the regions
_SIZES = struct.Struct("<QQ")


def enabled():
    """False when PSFLOW_LANE=0 or the platform has no abstract Unix sockets."""
    return sys.platform.startswith("linux") and settings.LANE.get()


class LaneError(Exception):
    """A lane call that failed: `code` is the grpc.StatusCode, `details` the server's text."""

    def __init__(self, code, details):
        super().__init__(details)
        self.code = code
        self.details = details


class _Context:
    """What the servicer's handlers ask of a gRPC context, for a lane call."""

    def abort(self, code, details):
        raise LaneError(code, details)

    def time_remaining(self):
        return None

    def add_callback(self, callback):
        return True

    def is_active(self):
        return True


def _recv_exact(sock, size):
    """`size` bytes from `sock` into a fresh buffer (uninitialized, then filled: the arrays
    read from it are views of it). ConnectionError on a closed connection."""
    buf = np.empty(size, np.uint8)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise ConnectionError("the lane's other end closed it")
        got += n
    return view


def in_shared_memory(array):
    """Whether numpy `array` lies in a lane's shared region: it is valid only during the call
    that brought it (the worker writes its next request over it)."""
    obj = array
    while obj is not None:
        if isinstance(obj, mmap.mmap):
            return True
        obj = obj.obj if isinstance(obj, memoryview) else getattr(obj, "base", None)
    return False


def _copy_into(region, pieces):
    """Copies `pieces` one after the other into the start of `region` (a memoryview)."""
    pos = 0
    for piece in pieces:
        view = memoryview(piece).cast("B")
        region[pos:pos + view.nbytes] = view
        pos += view.nbytes


def _map(fd, size):
    try:
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


def _send_pieces(sock, pieces):
    """Sends every byte of `pieces` (bytes-like objects) without joining them."""
    views = [memoryview(p).cast("B") for p in pieces if len(p)]
    while views:
        sent = sock.sendmsg(views[:512])
        while sent:
            if sent >= len(views[0]):
                sent -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][sent:]
                sent = 0


class LaneServer:
    """Serves `servicer`'s METHODS to same-host workers. `token`: the job's token, which a
    connection must present (none: any local process may connect, as to the gRPC port)."""

    def __init__(self, servicer, token=None, name_prefix="psflow"):
        self.servicer = servicer
        self.token = (token or "").encode()
        self.name = f"{name_prefix}-{os.getpid()}-{secrets.token_hex(8)}"
        self._listener = None
        self._connections = set()
        self._lock = threading.Lock()
        self._closed = False

    def start(self):
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind("\0" + self.name)
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, name="lane-accept", daemon=True).start()
        return self

    def _accept(self):
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self._connections.add(conn)
            threading.Thread(target=self._serve, args=(conn,), name="lane", daemon=True).start()

    def _hello(self, conn):
        conn.settimeout(HELLO_TIMEOUT_S)
        magic = bytes(_recv_exact(conn, len(MAGIC)))
        if magic != MAGIC:
            return False
        (size,) = _HELLO.unpack(_recv_exact(conn, _HELLO.size))
        if size > _MAX_TOKEN_BYTES:
            return False
        given = bytes(_recv_exact(conn, size))
        ok = hmac.compare_digest(given, self.token) if self.token else True
        code = 0 if ok else grpc.StatusCode.UNAUTHENTICATED.value[0]
        conn.sendall(_REPLY.pack(code, 0))
        conn.settimeout(None)
        return ok

    def _serve(self, conn):
        try:
            if not self._hello(conn):
                return
            context = _Context()
            handlers = [getattr(self.servicer, m) for m in METHODS]
            regions = None  # (request region, reply region) once the worker attached them
            while True:
                header = _recv_exact(conn, _REQUEST.size)
                method, size = _REQUEST.unpack(header)
                if method == _ATTACH:
                    regions = self._attach(conn, size, regions)
                    continue
                shared, method = method & _SHARED, method & ~_SHARED
                if method >= len(handlers) or size > codec.MAX_MESSAGE_BYTES or (
                        shared and (regions is None or size > len(regions[0]))):
                    log.warning("lane: a malformed frame (method %d, %d bytes); closing the "
                                "connection", method, size)
                    return
                if shared:
                    request = memoryview(np.frombuffer(regions[0], np.uint8, size))
                else:
                    request = _recv_exact(conn, size)
                if METHODS[method] != "Push":
                    request = bytes(request)
                try:
                    reply = handlers[method](request, context)
                    if not isinstance(reply, (bytes, list)):  # wire.Pieces is a list
                        reply = reply.SerializeToString()
                    pieces = reply if isinstance(reply, list) else [reply]
                    size = sum(len(p) for p in pieces)
                    if regions is not None and SHARED_MIN_BYTES <= size <= len(regions[1]):
                        _copy_into(memoryview(regions[1]), pieces)
                        conn.sendall(_REPLY.pack(_SHARED, size))
                    else:
                        _send_pieces(conn, [_REPLY.pack(0, size), *pieces])
                except LaneError as exc:  # the handler's context.abort
                    details = str(exc.details).encode("utf-8", "replace")
                    _send_pieces(conn, [_REPLY.pack(exc.code.value[0], len(details)), details])
                # Neither is kept while the connection waits for its next call.
                request = reply = None
        except (OSError, ConnectionError, struct.error):
            pass  # the worker went away; its calls are its own to retry
        finally:
            with self._lock:
                self._connections.discard(conn)
            conn.close()

    @staticmethod
    def _attach(conn, size, old):
        """Maps the regions of an ATTACH frame (its payload: their sizes; its descriptors
        ride on the payload); returns (request region, reply region). The old ones are
        unmapped once nothing uses them."""
        if size != _SIZES.size:
            raise ConnectionError(f"an ATTACH frame of {size} bytes")
        fds = array.array("i")
        data, ancillary, _, _ = conn.recvmsg(size, socket.CMSG_SPACE(2 * fds.itemsize))
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
        try:
            if len(data) < size:
                data += bytes(_recv_exact(conn, size - len(data)))
            if len(fds) != 2:
                raise ConnectionError(f"an ATTACH frame with {len(fds)} descriptors")
            request_size, reply_size = _SIZES.unpack(data)
            regions = _map(fds.pop(0), request_size), _map(fds.pop(0), reply_size)
        finally:
            for fd in fds:
                os.close(fd)
        conn.sendall(_REPLY.pack(0, 0))
        del old  # a request's arrays may still hold the old regions; they unmap with them
        return regions

    def stop(self):
        """Stops accepting and ends every connection (their calls in flight fail)."""
        with self._lock:
            self._closed = True
            connections = list(self._connections)
        if self._listener is not None:
            self._listener.close()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class LaneClient:
    """One connection to a shard's lane. `call` returns the reply's bytes, or None when the
    lane is busy with another thread's call (the caller uses gRPC then)."""

    def __init__(self, name, token=None, timeout=HELLO_TIMEOUT_S):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect("\0" + name)
            token = (token or "").encode()
            _send_pieces(sock, [MAGIC, _HELLO.pack(len(token)), token])
            code, _ = _REPLY.unpack(_recv_exact(sock, _REPLY.size))
        except BaseException:
            sock.close()
            raise
        if code != 0:
            sock.close()
            raise LaneError(_STATUS.get(code, grpc.StatusCode.UNKNOWN),
                            "the lane refused the job's token")
        self.name = name
        self._sock = sock
        self._lock = threading.Lock()
        self.broken = False
        self._regions = None  # (request region, reply region), memoryviews of memfd maps
        self._reply_wanted = 0  # the largest reply that came through the socket

    def _ensure_regions(self, request_size):
        """Regions that hold a `request_size` request and the largest reply seen so far,
        attached to the server; False where memfds are not to be had."""
        regions = self._regions
        wanted = max(request_size, self._reply_wanted)
        if regions is not None and len(regions[0]) >= request_size and \
                len(regions[1]) >= wanted:
            return True
        if not hasattr(os, "memfd_create") or not settings.LANE_SHARED.get():
            return False
        sizes = [max(request_size, len(regions[0]) if regions else 0),
                 max(wanted, len(regions[1]) if regions else 0)]
        sizes = [-(-size // mmap.PAGESIZE) * mmap.PAGESIZE for size in sizes]
        fds = []
        try:
            for size, what in zip(sizes, ("request", "reply"), strict=True):
                fd = os.memfd_create(f"psflow-lane-{what}", os.MFD_CLOEXEC)
                fds.append(fd)
                os.ftruncate(fd, size)
            maps = [mmap.mmap(fd, size) for fd, size in zip(fds, sizes, strict=True)]
            self._sock.sendall(_REQUEST.pack(_ATTACH, _SIZES.size))
            self._sock.sendmsg([_SIZES.pack(*sizes)],
                               [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        finally:
            for fd in fds:
                os.close(fd)
        code, _ = _REPLY.unpack(_recv_exact(self._sock, _REPLY.size))
        if code != 0:
            raise ConnectionError("the lane refused the shared regions")
        self._regions = tuple(memoryview(m) for m in maps)
        return True

    def call(self, method, pieces, timeout):
        """Sends `pieces` (the request's bytes, in pieces) as `method`; the reply's bytes.
        LaneError for an error status; ConnectionError or TimeoutError when the lane failed
        (it is broken from then on)."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if self.broken:
                raise ConnectionError("the lane is closed")
            size = sum(len(p) for p in pieces)
            code = METHODS.index(method)
            try:
                self._sock.settimeout(timeout)
                if size >= SHARED_MIN_BYTES and self._ensure_regions(size):
                    _copy_into(self._regions[0], pieces)
                    self._sock.sendall(_REQUEST.pack(code | _SHARED, size))
                else:
                    _send_pieces(self._sock, [_REQUEST.pack(code, size), *pieces])
                code, length = _REPLY.unpack(_recv_exact(self._sock, _REPLY.size))
                if code & _SHARED:
                    code &= ~_SHARED
                    data = np.empty(length, np.uint8)  # the next reply comes over this one
                    data[:] = np.frombuffer(self._regions[1], np.uint8, length)
                    data = memoryview(data)
                else:
                    data = _recv_exact(self._sock, length)
                    if code == 0 and length >= SHARED_MIN_BYTES:
                        self._reply_wanted = max(self._reply_wanted, length)
            except (OSError, ConnectionError):  # socket.timeout is an OSError
                self.close()
                raise
            if code != 0:
                raise LaneError(_STATUS.get(code, grpc.StatusCode.UNKNOWN),
                                bytes(data).decode("utf-8", "replace"))
            return data
        finally:
            self._lock.release()

    def close(self):
        self.broken = True
        try:
            self._sock.close()
        except OSError:
            pass
