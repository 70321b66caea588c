"""Incremental checkpoints of embedding tables on real parameter servers: deltas tied to their
base, read back as the table was (row for row, slots, steps and counts), restored on any
number of servers, refused when a link is damaged or missing, and kept by max_to_keep."""

import json

import numpy as np
import pytest

import psflow as tf
from psflow import checkpoint as files
from psflow.errors import DataLossError
from psflow.launcher.job_spec import JobSpec
from psflow.ps.shard_server import ParameterServer
from psflow.ps.shard_store import ShardStore
from psflow.train import saver
from psflow.train.cluster import ClusterSpec, TaskConfig
from psflow.worker.distributed_session import DistributedSession


def start_servers(count, root):
    servers = [ParameterServer(shard=i, num_workers=1, checkpoint_root=str(root))
               for i in range(count)]
    for server in servers:
        server.start()
    return servers


def stop(servers):
    for server in servers:
        server.stop(grace=0)


def build():
    """A table admitting keys at their second sighting, evicting rows not updated within 3
    steps, trained with Adagrad (a slot per row) beside a dense Variable."""
    keys = tf.placeholder(tf.int64, (None,), name="keys")
    y = tf.placeholder(tf.float32, (None,), name="y")
    option = tf.EmbeddingVariableOption(filter_option=tf.CounterFilter(filter_freq=2),
                                        evict_option=tf.GlobalStepEvict(steps_to_live=3))
    table = tf.get_embedding_variable("emb", 4, ev_option=option,
                                      initializer=tf.random_normal_initializer(seed=1))
    w = tf.Variable(np.ones(4, np.float32), name="w")
    loss = tf.reduce_mean(tf.square(tf.reduce_sum(tf.nn.embedding_lookup(table, keys) * w,
                                                  axis=1) - y))
    step = tf.train.get_or_create_global_step()
    train = tf.train.AdagradOptimizer(0.2).minimize(loss, global_step=step)
    return keys, y, train, step


def session_on(graph, servers, restore=None):
    spec = ClusterSpec({"ps": [f"127.0.0.1:{s.port}" for s in servers],
                        "worker": ["127.0.0.1:0"]})
    return DistributedSession(graph, TaskConfig(spec, "worker", 0), restore=restore)


def train(session, ops, phase, steps):
    """Steps over keys of `phase`: most new, some shared with the phase before (updates),
    the rest of the earlier rows left to go stale (evictions)."""
    keys, y, op, _ = ops
    rng = np.random.default_rng(phase)
    for _ in range(steps):
        batch = np.concatenate([rng.integers(phase * 40, phase * 40 + 50, 24),
                                rng.integers(0, 10, 4)]).astype(np.int64)
        session.run(op, {keys: batch, y: rng.normal(size=batch.size).astype(np.float32)})


def live_rows(servers):
    """{field: array} of the table as the servers hold it (keys sorted), slots included
    (those a restore left for the rule's first use too), and {key: count} of its entries."""
    fields, counts = {}, {}
    for server in servers:
        table = server.store.tables.held["emb"].table
        state = {k: np.array(v) for k, v in table.state().items()}
        for rule, pending in table._pending.items():
            for slot, rows, array in pending:
                full = state.setdefault(f"slot/{rule}/{slot}",
                                        np.zeros((len(table), table.dim), array.dtype))
                full[rows] = array
        for field, array in state.items():
            if field in ("entry_keys", "entry_freq") or array.ndim == 0:
                continue
            fields.setdefault(field, []).append(array)
        counts.update(zip(state["entry_keys"].tolist(), state["entry_freq"].tolist(),
                          strict=True))
    merged = {f: np.concatenate(a) for f, a in fields.items()}
    return sorted_rows(merged), counts


def sorted_rows(fields):
    order = np.argsort(fields["keys"])
    return {f: np.asarray(a)[order] for f, a in fields.items()
            if f not in ("entry_keys", "entry_freq", "removed") and np.ndim(a) > 0}


def assert_same_rows(got, want):
    assert sorted(got) == sorted(want)
    for field in want:
        np.testing.assert_array_equal(got[field], want[field], err_msg=field)


def index_of(checkpoint):
    return json.loads((checkpoint / files.INDEX).read_text())


@pytest.fixture
def chain(tmp_path):
    """Two servers trained through phases, a checkpoint after each (full, then deltas):
    (checkpoint dir, [checkpoint paths], live rows, live counts, a full copy's tables)."""
    ckpt = tmp_path / "ckpt"
    servers = start_servers(2, tmp_path)
    try:
        with tf.Graph().as_default() as graph:
            ops = build()
            session = session_on(graph, servers)
            variables = [v for v in graph.variables if v is not ops[3]]
            saved = []
            for phase in range(4):
                train(session, ops, phase, 4)
                saved.append(session.save_checkpoint(str(ckpt), variables, ops[3], 10,
                                                     full_every=10))
            whole = session.save_checkpoint(str(tmp_path / "whole"), variables, ops[3], 1,
                                            full_every=1)
            rows, counts = live_rows(servers)
            session.close()
    finally:
        stop(servers)
    return ckpt, [tmp_path / "ckpt" / p.rsplit("/", 1)[-1] for p in saved], rows, counts, \
        files.read_tables(whole)


def test_a_chain_of_deltas_reads_back_as_the_table_was(chain):
    ckpt, saved, rows, _, whole = chain
    first, *later = [index_of(p) for p in saved]
    assert all("base" not in shard for shard in first["shards"])
    for k, index in enumerate(later):  # each delta names the full file and the deltas between
        for i, shard in enumerate(index["shards"]):
            assert [link["checkpoint"] for link in shard["base"]] == \
                [p.name for p in saved[:k + 1]]
            assert shard["base"][0]["file"] == f"shard-{i}.npz"
    # A delta holds the rows changed since the checkpoint before, not the table.
    last = files.read_shard_tables(str(saved[-1] / "shard-0.npz"))["emb"]
    assert 0 < last["keys"].size and last["removed"].size
    assert last["keys"].size < len(set(last["keys"].tolist()) | set(
        files.read_shard_tables(str(saved[-2] / "shard-0.npz"))["emb"]["keys"].tolist()))
    # The table read from the last delta is the table a full copy reads, row for row.
    composed = files.read_tables(saved[-1])["emb"]
    assert_same_rows(sorted_rows(composed), sorted_rows(whole["emb"]))
    assert_same_rows(sorted_rows(composed), rows)
    assert sorted(composed["entry_keys"].tolist()) == sorted(whole["emb"]["entry_keys"].tolist())
    evicted = {int(k) for k in files.read_tables(saved[0])["emb"]["keys"]} - \
        set(composed["keys"].tolist())
    assert evicted  # rows were evicted between the checkpoints, and are gone
    model = files.load_model(str(ckpt))
    np.testing.assert_array_equal(model["emb/keys"], rows["keys"])


@pytest.mark.parametrize("shards", [1, 2])
def test_restoring_a_delta_gives_back_every_row_slot_step_and_count(chain, tmp_path, shards):
    ckpt, _, rows, counts, _ = chain
    servers = start_servers(shards, tmp_path)
    try:
        with tf.Graph().as_default() as graph:
            ops = build()
            variables = [v for v in graph.variables if v is not ops[3]]
            session = session_on(graph, servers, saver.latest_state(str(ckpt), variables))
            assert_same_rows(live_rows(servers)[0], rows)
            restored_counts = live_rows(servers)[1]
            assert {k: restored_counts.get(k) for k in counts} == counts
            # A restored server is a new incarnation: its first checkpoint is full.
            train(session, ops, 5, 1)
            again = session.save_checkpoint(str(ckpt), variables, ops[3], 10)
            assert all("base" not in shard for shard in index_of(
                ckpt / again.rsplit("/", 1)[-1])["shards"])
            session.close()
    finally:
        stop(servers)


def test_a_damaged_delta_or_a_missing_base_is_refused_naming_the_file(chain):
    _, saved, _, _, _ = chain
    delta = saved[-1] / "shard-1.npz"
    original = delta.read_bytes()
    delta.write_bytes(original[:-10] + b"0123456789")
    with pytest.raises(DataLossError, match=str(delta)):
        files.read_tables(saved[-1])
    delta.write_bytes(original)
    middle = saved[1] / "shard-0.npz"
    kept = middle.read_bytes()
    middle.unlink()
    with pytest.raises(DataLossError, match=f"{middle} is missing"):
        files.read_tables(saved[-1])
    with pytest.raises(DataLossError, match=str(middle)):
        files.load_model(str(saved[-1].parent))
    middle.write_bytes(kept)
    files.read_tables(saved[-1])
    base = saved[0] / "shard-1.npz"
    base.unlink()
    with pytest.raises(DataLossError, match=f"{base} is missing"):
        files.read_tables(saved[-1])


def test_a_base_outside_the_checkpoints_or_without_its_checksum_is_refused(chain):
    _, saved, _, _, _ = chain
    original = index_of(saved[-1])
    for change in ({"checkpoint": "../../etc"}, {"file": "/etc/passwd"}, {"sha256": None}):
        index = json.loads(json.dumps(original))
        index["shards"][0]["base"][0].update(change)
        (saved[-1] / files.INDEX).write_text(json.dumps(index))
        with pytest.raises(DataLossError, match="not a shard file of a checkpoint beside it"):
            files.read_tables(saved[-1])


def test_a_shard_writes_a_full_file_when_a_delta_cannot_be_exact(tmp_path):
    """Against another incarnation, a sequence it has not reached, or removals older than its
    log of them, a shard writes every row."""
    store = ShardStore(shard=0, checkpoint_root=str(tmp_path))
    store.declare_tables([{"name": "t", "dim": 2, "dtype": "float32",
                           "initializer": {"kind": "zeros"}}])
    table = store.tables.get("t").table
    table.lookup(np.arange(100, dtype=np.int64))
    *_, (delta, seq, incarnation) = store.save_incremental(str(tmp_path / "a.npz"))
    assert not delta and seq > 0
    table.lookup(np.arange(100, 110, dtype=np.int64))

    def save(since, of):
        *_, (delta, _, _) = store.save_incremental(str(tmp_path / "b.npz"), since, of)
        rows = files.read_shard_tables(str(tmp_path / "b.npz"))["t"]["keys"].size
        return delta, rows

    assert save(seq, incarnation) == (True, 10)
    assert save(seq, incarnation ^ 1) == (False, 110)
    assert save(seq + 1000, incarnation) == (False, 110)
    table.tombstones.limit = 2
    for key in range(5):
        table.remove_keys(np.array([key]))
    assert save(seq, incarnation) == (False, 105)


def test_launch_hands_the_workers_how_often_a_checkpoint_is_full():
    spec = JobSpec(script="train.py", workers=1, ps=1, checkpoint_full_every=3)
    assert spec.export_env()["PSFLOW_CHECKPOINT_FULL_EVERY"] == "3"
    assert "PSFLOW_CHECKPOINT_FULL_EVERY" not in JobSpec(script="train.py", workers=1,
                                                         ps=1).export_env()


def test_keeping_checkpoints_keeps_the_files_a_kept_delta_extends(tmp_path):
    ckpt = tmp_path / "ckpt"
    servers = start_servers(1, tmp_path)
    try:
        with tf.Graph().as_default() as graph:
            ops = build()
            session = session_on(graph, servers)
            variables = [v for v in graph.variables if v is not ops[3]]
            names = []
            for phase in range(7):
                train(session, ops, phase, 1)
                path = session.save_checkpoint(str(ckpt), variables, ops[3], 2, full_every=3)
                names.append(path.rsplit("/", 1)[-1])
            rows, _ = live_rows(servers)
            session.close()
    finally:
        stop(servers)
    # Full at 0, 3 and 6: the last two are kept, and the full file and delta 5 extends.
    kept = sorted(p.name for p in ckpt.iterdir() if p.name.startswith("ckpt-"))
    assert kept == names[3:]
    assert "base" not in index_of(ckpt / names[6])["shards"][0]
    assert [link["checkpoint"] for link in index_of(ckpt / names[5])["shards"][0]["base"]] == \
        [names[3], names[4]]
    files.read_tables(ckpt / names[5])  # whole
    assert_same_rows(sorted_rows(files.read_tables(ckpt / names[6])["emb"]), rows)


@pytest.mark.cluster
def test_a_job_resumes_from_a_chain_of_deltas(tmp_path):
    from test_cluster import SCRIPTS, explain, launch, start_step

    script = str(SCRIPTS / "resumable.py")
    first = launch("--workers", "2", "--ps", "2", "--checkpoint-root", tmp_path,
                   "--checkpoint-full-every", "100", script, "--checkpoint-dir", str(tmp_path),
                   "--last-step", "30")
    assert first.returncode == 0, explain(first)
    latest = files.latest(str(tmp_path))
    links = [shard["base"] for shard in index_of(tmp_path / latest.rsplit("/", 1)[-1])["shards"]]
    assert all(links) and len({tuple(link["checkpoint"] for link in s) for s in links}) == 1
    assert (tmp_path / links[0][0]["checkpoint"]).is_dir()  # the base outlived max_to_keep
    model = tf.load_model(str(tmp_path / "model.npz"))
    # Nothing left to train: the model comes back from base + deltas on one server.
    again = launch("--workers", "1", "--ps", "1", "--checkpoint-root", tmp_path, script,
                   "--checkpoint-dir", str(tmp_path), "--last-step", "30")
    assert again.returncode == 0, explain(again)
    assert start_step(again) >= 30, explain(again)
    again_model = tf.load_model(str(tmp_path / "model.npz"))
    assert model["ids/emb/keys"].size > 0 and sorted(again_model) == sorted(model)
    for name, value in again_model.items():
        np.testing.assert_array_equal(value, model[name], err_msg=name)
