"""The predict side's client of the serving parameter tier (serving/remote_params.py), against
real parameter servers on 127.0.0.1: rows by key from the shards that own them, a dead
replica passed over within the deadline, partitioned Variables put together, changes seen at
the next dense poll, and hot rows cached for their TTL only."""

import socket
import time

import numpy as np
import pytest

from psflow.errors import UnavailableError
from psflow.key_index import shard_of_keys
from psflow.proto import codec, wire
from psflow.proto import psflow_pb2 as pb
from psflow.ps.shard_server import ParameterServer
from psflow.serving.remote_params import RemoteParams
from psflow.worker.client import ShardClient

DIM = 3
TABLE = "items"


@pytest.fixture
def shards():
    servers = [ParameterServer(shard=i, num_workers=1, port=0).start() for i in range(2)]
    clients = [ShardClient(i, f"127.0.0.1:{s.port}", token="") for i, s in enumerate(servers)]
    yield servers, clients
    for server in servers:
        server.stop(grace=0)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def declare(client):
    client.call("DeclareVariables", pb.DeclareVariablesRequest(tables=[pb.TableSpec(
        name=TABLE, dim=DIM, dtype="float32", initializer="zeros")]))


def set_rows(clients, keys, values, table=TABLE):
    """`values` added to the rows of `keys` on their shards (a training lookup makes them, an
    SGD step of -values adds to them)."""
    owner = shard_of_keys(keys, len(clients))
    for i, client in enumerate(clients):
        mine = owner == i
        if not mine.any():
            continue
        request = pb.PullRowsRequest()
        codec.encode(keys[mine], request.keys.add(name=table, train=True).keys)
        client.call("PullRows", request)
        push = wire.PushBuilder(worker=0)
        push.rule.name = "sgd"
        push.rule.hyper["learning_rate"] = 1.0
        push.add_gradient(table, 0, -values[mine], keys[mine], keyed=True)
        client.call("Push", push)


def set_variable(client, name, value, declare_it=True):
    if declare_it:
        client.call("DeclareVariables", pb.DeclareVariablesRequest(variables=[pb.VariableSpec(
            name=name, dtype="float32", shape=value.shape)]))
    request = pb.InitializeVariablesRequest(overwrite=True)
    codec.encode(value.astype(np.float32), request.values.add(name=name).tensor)
    client.call("InitializeVariables", request)


def addresses(servers):
    return [[f"127.0.0.1:{s.port}"] for s in servers]


def test_rows_come_from_the_shards_that_own_them(shards):
    servers, clients = shards
    for client in clients:
        declare(client)
    keys = np.arange(-20, 20, dtype=np.int64) * 7919
    values = np.arange(keys.size * DIM, dtype=np.float32).reshape(-1, DIM)
    set_rows(clients, keys, values)
    assert len(set(shard_of_keys(keys, 2))) == 2
    params = RemoteParams(addresses(servers), token="", cache_ttl=0)
    asked = np.concatenate([keys[::-1], [123456789, keys[3]]])
    rows = params.lookup("items", asked)
    np.testing.assert_array_equal(rows[:keys.size], values[::-1])
    np.testing.assert_array_equal(rows[-2], np.zeros(DIM))  # no row: zeros, as in training
    np.testing.assert_array_equal(rows[-1], values[3])
    assert params.lookup("nothing", keys) is None
    params.close()


def test_a_dead_replica_is_passed_over_within_the_deadline(shards):
    servers, clients = shards
    for client in clients:
        declare(client)
    keys = np.arange(1, 30, dtype=np.int64)
    values = np.ones((keys.size, DIM), np.float32) * keys[:, None]
    set_rows(clients, keys, values)
    dead = f"127.0.0.1:{free_port()}"
    replicas = [[dead, f"127.0.0.1:{servers[0].port}"], [f"127.0.0.1:{servers[1].port}", dead]]
    params = RemoteParams(replicas, token="", deadline=2.0, cache_ttl=0)
    for _ in range(3):
        np.testing.assert_array_equal(params.lookup("items", keys), values)
    assert params.shards[0].failovers == 1  # then the live replica is tried first
    params.close()
    gone = RemoteParams([[dead], [dead]], token="", deadline=0.3, cache_ttl=0)
    started = time.monotonic()
    with pytest.raises(UnavailableError, match="no replica of shard [01]"):
        gone.lookup("items", keys)
    assert time.monotonic() - started < 2.0
    gone.close()


def test_variables_whole_and_partitioned_and_their_changes(shards):
    servers, clients = shards
    set_variable(clients[1], "w", np.arange(4.0))
    set_variable(clients[0], "p/part_0", np.ones((2, 2)))
    set_variable(clients[1], "p/part_1", np.zeros((1, 2)))
    params = RemoteParams(addresses(servers), token="", dense_period=0.05)
    changes = []
    params.on_dense(lambda: changes.append(params.dense("w").copy()) or True)
    np.testing.assert_array_equal(params.dense("w"), np.arange(4.0))
    np.testing.assert_array_equal(params.dense("p"), [[1, 1], [1, 1], [0, 0]])
    assert params.dense("absent") is None
    set_variable(clients[1], "w", np.full(4, 7.0), declare_it=False)
    deadline = time.monotonic() + 5
    while not changes and time.monotonic() < deadline:
        time.sleep(0.02)
    np.testing.assert_array_equal(changes[0], np.full(4, 7.0))
    params.close()


@pytest.mark.cluster  # a concurrency or timing run
def test_hot_rows_are_cached_for_their_ttl_only(shards):
    servers, clients = shards
    for client in clients:
        declare(client)
    keys = np.array([5, 6, 7], np.int64)
    set_rows(clients, keys, np.ones((3, DIM), np.float32))
    params = RemoteParams(addresses(servers), token="", cache_ttl=0.3)
    params.lookup("items", keys)
    set_rows(clients, keys, np.ones((3, DIM), np.float32))  # now 2 everywhere
    np.testing.assert_array_equal(params.lookup("items", keys), np.ones((3, DIM)))
    assert params.cache.hits == 3
    time.sleep(0.35)
    np.testing.assert_array_equal(params.lookup("items", keys), np.full((3, DIM), 2.0))
    params.close()


@pytest.mark.cluster  # a concurrency or timing run
def test_concurrent_lookups_share_calls_and_each_gets_its_own_rows(shards):
    import threading
    servers, clients = shards
    for client in clients:
        declare(client)
    keys = np.arange(1, 200, dtype=np.int64)
    values = np.repeat(keys[:, None], DIM, axis=1).astype(np.float32)
    set_rows(clients, keys, values)
    params = RemoteParams(addresses(servers), token="", cache_ttl=0, deadline=5.0)
    wrong, missing = [], []

    def requests(seed):
        rng = np.random.default_rng(seed)
        for _ in range(30):
            asked = rng.choice(keys, 12)
            if not np.array_equal(params.lookup(TABLE, asked), values[asked - 1]):
                wrong.append(asked)
            if params.lookup("nothing", asked[:2]) is not None:  # in a call with the others
                missing.append(asked)
    threads = [threading.Thread(target=requests, args=(k,)) for k in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not wrong and not missing
    calls = sum(c.calls for c in params._coalescers)
    lookups = sum(c.lookups for c in params._coalescers)
    assert lookups >= 16 * 30 and calls < lookups
    params.close()
