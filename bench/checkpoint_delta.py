"""What an incremental checkpoint costs beside a full one: a parameter server's shard (the
store `python -m psflow.ps` serves, here in-process) holding a table of --rows rows (dim 16
float32, trained with Adagrad so each row has a slot), --changed of them (1% by default,
scattered) updated after a full checkpoint, then a delta checkpoint of the shard: seconds and
bytes of each, the ratio, and the target (a delta costs at most 10% of a full one, in time
and in bytes), met or not. Then reading the table back from the full file and from base +
delta.

    python bench/checkpoint_delta.py [--rows 10000000] [--changed 0.01] [--dir DIR]
"""

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from psflow import checkpoint as files
from psflow.ps.shard_store import ShardStore
from psflow.train.update_rules import UpdateRule

DIM = 16
TARGET = 0.10


def build(store, rows, rule):
    store.declare_tables([{"name": "t", "dim": DIM, "dtype": "float32",
                           "initializer": {"kind": "zeros"}}])
    table = store.tables.get("t").table
    chunk = 1 << 18
    for start in range(0, rows, chunk):
        keys = np.arange(start, min(start + chunk, rows), dtype=np.int64) * 7919 + 13
        table.lookup(keys)
        table.apply(rule, keys, np.full((keys.size, DIM), 0.01, np.float32))
    return table


def timed_save(store, path, since=0, incarnation=0):
    started = time.perf_counter()
    digest, _, size, _, _, (delta, seq, incarnation) = store.save_incremental(
        path, since, incarnation)
    return time.perf_counter() - started, size, digest, delta, seq, incarnation


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--changed", type=float, default=0.01,
                        help="the share of the rows updated between the checkpoints")
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary "
                        "folder, removed after)")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="psflow-delta-bench-", dir=args.dir)
    try:
        store = ShardStore(shard=0, checkpoint_root=root)
        rule = UpdateRule("adagrad", learning_rate=0.1, initial_accumulator_value=0.1)
        started = time.perf_counter()
        table = build(store, args.rows, rule)
        print(f"table of {len(table)} rows x {DIM} float32 with an Adagrad slot, built in "
              f"{time.perf_counter() - started:.1f} s")
        full_dir, delta_dir = os.path.join(root, "ckpt-1"), os.path.join(root, "ckpt-2")
        os.mkdir(full_dir)
        os.mkdir(delta_dir)
        full_s, full_bytes, full_sha, delta, seq, incarnation = timed_save(
            store, os.path.join(full_dir, "shard-0.npz"))
        assert not delta
        rng = np.random.default_rng(0)
        count = int(args.rows * args.changed)
        rows = np.unique(rng.choice(args.rows, size=count, replace=False))
        keys = np.sort(rows.astype(np.int64) * 7919 + 13)
        for start in range(0, keys.size, 1 << 16):
            part = keys[start:start + (1 << 16)]
            table.apply(rule, part, np.full((part.size, DIM), 0.5, np.float32))
        delta_s, delta_bytes, delta_sha, delta, _, _ = timed_save(
            store, os.path.join(delta_dir, "shard-0.npz"), seq, incarnation)
        assert delta
        print(f"full checkpoint:        {full_s:7.3f} s  {full_bytes / 1e6:9.1f} MB")
        print(f"incremental ({keys.size} rows changed, {100 * keys.size / args.rows:.2f}%): "
              f"{delta_s:7.3f} s  {delta_bytes / 1e6:9.1f} MB")
        time_ratio, byte_ratio = delta_s / full_s, delta_bytes / full_bytes
        for what, ratio in (("time", time_ratio), ("bytes", byte_ratio)):
            print(f"incremental / full, {what}: {100 * ratio:.2f}% (target <= "
                  f"{100 * TARGET:.0f}%: {'met' if ratio <= TARGET else 'NOT met'})")
        # Reading back: the full file alone, and base + delta (the delta applied).
        record = {"file": "shard-0.npz", "sha256": full_sha, "parts": {}}
        specs = {"t": {"table": {"dim": DIM}, "dtype": "float32"}}
        files.write_index(full_dir, 1, [record], specs)
        files.write_index(delta_dir, 2, [dict(record, sha256=delta_sha, base=[
            {"checkpoint": "ckpt-1", "file": "shard-0.npz", "sha256": full_sha}])], specs)
        for name, directory in (("full file", full_dir), ("base + delta", delta_dir)):
            started = time.perf_counter()
            read = files.read_tables(directory)["t"]
            print(f"reading the table from the {name}: {time.perf_counter() - started:.2f} s "
                  f"({read['keys'].size} rows)")
        live = table.state()
        order = np.argsort(read["keys"])
        found = np.searchsorted(read["keys"][order], live["keys"])
        assert np.array_equal(read["values"][order][found], live["values"])
        print("base + delta reads as the live table: yes")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
