"""Fixtures shared by the suites that talk to one parameter server over gRPC: each module
defines its own `server` fixture; `channel` connects to it."""

import sys

# isort: off
import psflow  # noqa: F401 -- first, as scripts import it: it turns gRPC's fork handlers off
# isort: on
import grpc
import pytest

from psflow.proto import codec


@pytest.fixture
def channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}",
                               options=codec.CHANNEL_OPTIONS) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        yield ch


@pytest.fixture(autouse=True)
def thawed_heap():
    """Each test ends with the cycle collector seeing the whole heap again: a served
    version freezes what is alive (psflow.serving.heap), which must not keep another test's
    garbage out of reach."""
    yield
    heap = sys.modules.get("psflow.serving.heap")
    if heap is not None:
        heap.thaw()
