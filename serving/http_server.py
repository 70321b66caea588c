"""A small HTTP/1.1 server on the front loop: what TF Serving's REST API needs and no more.

Requests with a Content-Length body (or none), kept alive and answered in order; `Expect:
100-continue` is answered; a chunked body is refused with 411, a header block over 64 KiB
with 431, a body over the application's limit with 413, a malformed request with 400, each
as `{"error": ...}`, closing the connection where the stream cannot be trusted after it.
The application is one function (method, path, headers, body) -> (status, content type,
bytes), called in the loop or in the worker pool as it asks.
"""

import asyncio
import email.utils
import http
import json
import logging
import time

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 << 10
_REASONS = {status.value: status.phrase for status in http.HTTPStatus}


class HttpError(Exception):
    """A request that cannot be read: answered with `status`, then the connection closes."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class _Date:
    """The Date header's value, made once a second."""
    second, value = 0, ""

    @classmethod
    def now(cls):
        second = int(time.time())
        if second != cls.second:
            cls.second, cls.value = second, email.utils.formatdate(second, usegmt=True)
        return cls.value


def _head(status, content_type, length, close):
    connection = "Connection: close\r\n" if close else ""
    return (f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\nServer: psflow-serve\r\n"
            f"Date: {_Date.now()}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n{connection}\r\n").encode("latin-1")


def parse_head(block):
    """(method, target, version, {lower-case name: value}) of a request's header block."""
    lines = block.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, f"malformed request line {lines[0][:100]!r}")
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise HttpError(400, f"malformed header line {line[:100]!r}")
        headers[name.lower()] = value.strip()
    return parts[0], parts[1], parts[2], headers


class HttpProtocol(asyncio.Protocol):
    """One connection: reads requests from the stream, answers them in order."""

    def __init__(self, server):
        self.server = server
        self.transport = None
        self.buffer = bytearray()
        self.busy = False  # a request is being answered in the pool; later ones wait
        self.closing = False

    def connection_made(self, transport):
        self.transport = transport
        self.server.connections.add(self)

    def connection_lost(self, exc):
        self.closing = True
        self.server.connections.discard(self)

    def data_received(self, data):
        self.buffer += data
        if not self.busy:
            self._serve()

    def _serve(self):
        while not self.closing and not self.busy:
            try:
                request = self._next_request()
            except HttpError as exc:
                self._send(exc.status, "application/json",
                           json.dumps({"error": str(exc)}).encode(), close=True)
                return
            if request is None:
                return
            method, target, headers, body, close = request
            app = self.server.app
            if app.runs_inline(method, target, len(body)):
                self._send(*app.respond(method, target, headers, body), close=close)
            else:
                self.busy = True
                task = asyncio.ensure_future(self._offloaded(method, target, headers, body,
                                                             close))
                self.server.tasks.add(task)
                task.add_done_callback(self.server.tasks.discard)

    async def _offloaded(self, method, target, headers, body, close):
        try:
            answer = await self.server.offload(self.server.app.respond, method, target,
                                               headers, body)
        except Exception as exc:  # the application answers its own errors; this is a bug
            log.exception("%s %s failed", method, target)
            answer = (500, "application/json", json.dumps({"error": str(exc)}).encode())
        self.busy = False
        if not self.closing:
            self._send(*answer, close=close)
            self._serve()

    def _next_request(self):
        """(method, target, headers, body, close after) of the next whole request in the
        buffer, or None until it has arrived."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEADER_BYTES:
                raise HttpError(431, f"the request's headers are over {MAX_HEADER_BYTES} bytes")
            return None
        method, target, version, headers = parse_head(bytes(self.buffer[:end]))
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise HttpError(411, "a request body needs a Content-Length (chunked is not read)")
        try:
            length = int(headers.get("content-length", "0"))
            if length < 0:
                raise ValueError(length)
        except ValueError:
            raise HttpError(400, "Content-Length is not a number of bytes") from None
        limit = self.server.app.max_body_bytes
        if length > limit:
            raise HttpError(413, f"the request body of {length} bytes is over the limit of "
                                 f"{limit}")
        if len(self.buffer) < end + 4 + length:
            if headers.get("expect", "").lower() == "100-continue" and not getattr(
                    self, "_continued", False):
                self._continued = True
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return None
        self._continued = False
        body = bytes(self.buffer[end + 4:end + 4 + length])
        del self.buffer[:end + 4 + length]
        connection = headers.get("connection", "").lower()
        close = connection == "close" or (version == "HTTP/1.0" and connection != "keep-alive")
        return method, target, headers, body, close

    def _send(self, status, content_type, payload, close=False):
        if self.transport.is_closing():
            return
        self.transport.write(_head(status, content_type, len(payload), close) + payload)
        if close:
            self.closing = True
            self.transport.close()


class HttpServer:
    """Serves `app` on (host, port) in `front` (a FrontLoop); port 0 takes a free one."""

    def __init__(self, app, front, host, port):
        self.app = app
        self.front = front
        self.connections = set()
        self.tasks = set()
        self.offload = front.offload
        self._server = front.call(front.loop.create_server(
            lambda: HttpProtocol(self), host, port, start_serving=False, reuse_address=True))
        self.port = self._server.sockets[0].getsockname()[1]

    def start(self):
        self.front.call(self._server.start_serving())

    def stop(self):
        async def close():
            self._server.close()
            for connection in list(self.connections):
                if connection.transport is not None:
                    connection.transport.close()
        self.front.call(close())
