"""The REST front's HTTP/1.1 over a raw socket: requests kept alive and pipelined, `Expect:
100-continue`, HTTP/1.0 and `Connection: close`, and the requests it cannot read (a chunked
body, a header block over the limit, a malformed request line or Content-Length), each
answered with its status while the server keeps serving. Large requests, answered in the
worker pool, keep their order on the connection."""

import json
import socket

import numpy as np
import pytest

from psflow.serving import front_loop, http_server
from psflow.serving.model_config import ModelSettings
from psflow.serving.model_server import ModelServer
import live_predictor
from waiting import wait_for

BODY = json.dumps({"inputs": {"x": [[0.5, -1.0, 2.0]], "ids": [3]}}).encode()


@pytest.fixture
def server(tmp_path):
    live_predictor.write_version(tmp_path, 1, seed=1)
    server = ModelServer([ModelSettings("ctr", str(tmp_path))], port=0, rest_port=0,
                         poll_wait_seconds=0.05, load_fn=live_predictor.load, host="127.0.0.1")
    server.start()
    wait_for(lambda: server.core.available, 10, "version 1 available")
    yield server
    server.stop(grace=2)


def _post(body=BODY, extra="", version="HTTP/1.1"):
    return (f"POST /v1/models/ctr:predict {version}\r\nHost: x\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _read_answers(sock, count):
    """[(status, headers, body)] of `count` answers read from `sock`."""
    data, answers = b"", []
    while len(answers) < count:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            head = data[:end].decode("latin-1").split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
            length = int(headers.get("content-length", 0))
            if len(data) >= end + 4 + length:
                answers.append((int(head[0].split()[1]), headers, data[end + 4:end + 4 + length]))
                data = data[end + 4 + length:]
                continue
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return answers


def _connect(server):
    sock = socket.create_connection(("127.0.0.1", server.rest_api_port), timeout=10)
    return sock


def test_pipelined_requests_on_one_connection_are_answered_in_order(server):
    with _connect(server) as sock:
        bad = json.dumps({"inputs": {"x": [[1.0]], "ids": [3]}}).encode()
        sock.sendall(_post() + _post(bad) + b"GET /v1/models/ctr HTTP/1.1\r\nHost: x\r\n\r\n")
        answers = _read_answers(sock, 3)
    assert [a[0] for a in answers] == [200, 400, 200]
    want = live_predictor.expected(1, [[0.5, -1.0, 2.0]], [3])["scores"]
    np.testing.assert_allclose(json.loads(answers[0][2])["outputs"]["scores"], want, atol=1e-6)
    assert "shape" in json.loads(answers[1][2])["error"]
    assert json.loads(answers[2][2])["model_version_status"][0]["state"] == "AVAILABLE"


def test_large_requests_answered_in_the_pool_keep_their_order(server, monkeypatch):
    monkeypatch.setattr(front_loop, "INLINE_BYTES", 10)  # every predict goes to the pool
    with _connect(server) as sock:
        sock.sendall(_post() + b"GET /v1/models/ctr/metadata HTTP/1.1\r\n\r\n" + _post())
        answers = _read_answers(sock, 3)
    assert [a[0] for a in answers] == [200, 200, 200]
    assert "outputs" in json.loads(answers[0][2]) and "outputs" in json.loads(answers[2][2])
    assert "metadata" in json.loads(answers[1][2])


def test_expect_100_continue_is_answered_before_the_body(server):
    with _connect(server) as sock:
        head = _post(extra="Expect: 100-continue\r\n")[:-len(BODY)]
        sock.sendall(head)
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(BODY)
        (status, _, body), = _read_answers(sock, 1)
    assert status == 200 and "outputs" in json.loads(body)


@pytest.mark.parametrize("version, extra", [("HTTP/1.0", ""),
                                            ("HTTP/1.1", "Connection: close\r\n")])
def test_a_connection_asked_to_close_is_closed_after_its_answer(server, version, extra):
    with _connect(server) as sock:
        sock.sendall(_post(version=version, extra=extra))
        (status, headers, _), = _read_answers(sock, 1)
        assert status == 200 and headers["connection"] == "close"
        assert sock.recv(100) == b""


@pytest.mark.parametrize("raw, status, words", [
    (b"POST /v1/models/ctr:predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0"
     b"\r\n\r\n", 411, "Content-Length"),
    (b"GET /v1/models/ctr HTTP/1.1\r\nX-Big: " + b"a" * (http_server.MAX_HEADER_BYTES + 10),
     431, "headers are over"),
    (b"NONSENSE\r\n\r\n", 400, "malformed request line"),
    (b"POST /v1/models/ctr:predict HTTP/1.1\r\nContent-Length: ten\r\n\r\n", 400,
     "Content-Length"),
    (b"GET /v1/models/ctr HTTP/1.1\r\nno colon here\r\n\r\n", 400, "malformed header"),
])
def test_an_unreadable_request_gets_its_status_and_the_server_keeps_serving(server, raw, status,
                                                                            words):
    with _connect(server) as sock:
        sock.sendall(raw)
        (got, headers, body), = _read_answers(sock, 1)
        assert got == status and words in json.loads(body)["error"]
        assert headers["connection"] == "close" and sock.recv(100) == b""
    with _connect(server) as sock:
        sock.sendall(_post())
        assert _read_answers(sock, 1)[0][0] == 200


def test_an_unknown_method_is_405_and_the_connection_stays_open(server):
    with _connect(server) as sock:
        sock.sendall(b"DELETE /v1/models/ctr HTTP/1.1\r\n\r\n" + _post())
        answers = _read_answers(sock, 2)
    assert [a[0] for a in answers] == [405, 200]
    assert "DELETE" in json.loads(answers[0][2])["error"]


def test_nan_in_and_out_is_written_as_tf_serving_writes_it(server):
    body = b'{"inputs": {"x": [[NaN, 0.0, 1.0]], "ids": [3]}}'
    with _connect(server) as sock:
        sock.sendall(_post(body))
        (status, _, answer), = _read_answers(sock, 1)
    assert status == 200 and b"NaN" in answer and b"null" not in answer
    assert np.isnan(json.loads(answer)["outputs"]["scores"][0][0])
