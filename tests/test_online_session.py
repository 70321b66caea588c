"""A distributed session on a followed directory, against parameter servers in this process:
its pushes carry the consumed position to shard 0, the chief's checkpoint holds it, and a job
restarted from the checkpoint (fresh servers) trains on the rest, every line once."""

import json

import numpy as np
import pytest

import psflow as tf
from psflow.data import stream_state
from psflow.proto import psflow_pb2 as pb
from psflow.ps.shard_server import ParameterServer
from psflow.worker.client import ShardClient
from test_followed_files import count_lines_model, ship


@pytest.fixture(autouse=True)
def fresh_stream_state():
    stream_state.reset()
    yield
    stream_state.reset()


def start_servers(root, count=2):
    return [ParameterServer(shard=i, num_workers=1, checkpoint_root=str(root)).start()
            for i in range(count)]


def use_cluster(monkeypatch, servers):
    monkeypatch.setenv("TF_CONFIG", json.dumps({
        "cluster": {"ps": [f"127.0.0.1:{s.port}" for s in servers], "worker": ["127.0.0.1:0"]},
        "task": {"type": "worker", "index": 0}}))


def shard_0_positions(server):
    client = ShardClient(0, f"127.0.0.1:{server.port}")
    try:
        reply = client.call("GetInputPositions", pb.InputPositionsRequest())
    finally:
        client.close()
    return [(p.dataset, p.shard, p.num_shards, p.file, p.lines) for p in reply.positions]


@pytest.mark.cluster  # a concurrency or timing run
def test_a_restarted_job_trains_on_every_line_once(tmp_path, monkeypatch):
    data, ckpt = tmp_path / "data", tmp_path / "ckpt"
    data.mkdir()
    ship(data, "x-1", ["0", "1", "2"])
    ship(data, "x-2", ["3", "4", "5"])
    servers = start_servers(tmp_path)
    try:
        use_cluster(monkeypatch, servers)
        with tf.Graph().as_default():
            _, train = count_lines_model(data)
            with tf.train.MonitoredTrainingSession(checkpoint_dir=str(ckpt)) as sess:
                sess.run(train)
                sess.run(train)  # ids 0 to 3
                assert shard_0_positions(servers[0]) == [(str(data), 0, 1, "x-2", 1)]
        index = json.loads((ckpt / tf.checkpoint.latest(str(ckpt)).rsplit("/", 1)[1] /
                            "index.json").read_text())
        assert index["input_positions"] == [{"dataset": str(data), "shard": 0,
                                             "num_shards": 1, "file": "x-2", "lines": 1}]
    finally:
        for server in servers:
            server.stop(grace=0)
    stream_state.reset()  # a new worker process
    ship(data, "x-3", ["6"])
    servers = start_servers(tmp_path, count=1)  # fresh servers, fewer of them
    try:
        use_cluster(monkeypatch, servers)
        with tf.Graph().as_default():
            _, train = count_lines_model(data, idle_timeout=0.3)
            with tf.train.MonitoredTrainingSession(checkpoint_dir=str(ckpt)) as sess:
                assert stream_state.start_of(str(data), 0) == (1, "x-2", 1)
                while not sess.should_stop():
                    sess.run(train)
        assert shard_0_positions(servers[0]) == [(str(data), 0, 1, "x-3", 1)]
    finally:
        for server in servers:
            server.stop(grace=0)
    final = tf.load_model(str(ckpt / "model.npz"))["counts"]
    np.testing.assert_array_equal(final, [-1] * 7 + [0] * 3)
