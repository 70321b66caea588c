"""Fixtures shared by the suites that talk to one parameter server over gRPC: each module
defines its own `server` fixture; `channel` connects to it."""

import grpc
import pytest

from psflow.proto import codec


@pytest.fixture
def channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}",
                               options=codec.CHANNEL_OPTIONS) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        yield ch
