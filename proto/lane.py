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
answers with a status. The server offers the lane in RegisterWorker's answer (`lane`); the
worker connects when it can and uses gRPC otherwise, or when the lane is busy (another thread's
call) or was lost (a failed call ends the lane; the next RegisterWorker offers it again).
PSFLOW_LANE=0 turns it off on either side.
"""

import hmac
import logging
import os
import secrets
import socket
import struct
import sys
import threading

import grpc
import numpy as np

from . import codec

log = logging.getLogger(__name__)

METHODS = ("Pull", "PullRows", "Push")
MAGIC = b"psflow-lane/1\n"
_REQUEST = struct.Struct("<BQ")
_REPLY = struct.Struct("<BQ")
_HELLO = struct.Struct("<I")
_STATUS = {code.value[0]: code for code in grpc.StatusCode}
_MAX_TOKEN_BYTES = 4096
HELLO_TIMEOUT_S = 5.0


def enabled():
    """False when PSFLOW_LANE=0 or the platform has no abstract Unix sockets."""
    return sys.platform.startswith("linux") and os.environ.get("PSFLOW_LANE", "1") != "0"


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
            while True:
                header = _recv_exact(conn, _REQUEST.size)
                method, size = _REQUEST.unpack(header)
                if method >= len(handlers) or size > codec.MAX_MESSAGE_BYTES:
                    log.warning("lane: a malformed frame (method %d, %d bytes); closing the "
                                "connection", method, size)
                    return
                request = _recv_exact(conn, size)
                if METHODS[method] != "Push":
                    request = bytes(request)
                try:
                    reply = handlers[method](request, context)
                    if not isinstance(reply, (bytes, list)):  # wire.Pieces is a list
                        reply = reply.SerializeToString()
                    pieces = reply if isinstance(reply, list) else [reply]
                    size = sum(len(p) for p in pieces)
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
            try:
                self._sock.settimeout(timeout)
                _send_pieces(self._sock, [_REQUEST.pack(METHODS.index(method), size), *pieces])
                code, length = _REPLY.unpack(_recv_exact(self._sock, _REPLY.size))
                data = _recv_exact(self._sock, length)
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
