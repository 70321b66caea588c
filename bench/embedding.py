"""Memory and speed of one parameter server's hash-keyed embedding table (psflow.embedding_table):
--rows rows of dim 16 float32 with Adagrad slots, then batches of 16k keys (Zipf-distributed
over the rows, 10% of them new keys) looked up (creating the new rows) and updated.

Prints `bytes per row: N (ideal M)` from the process's resident memory (the ideal is the key,
the values and the slots), with the C heap set up as a parameter server's (psflow.transport.
memory: its thresholds, one heap, free memory handed back after traffic, here after each chunk
of rows filled), against the target of 1.5x; how long a checkpoint holds the table (the copy
a parameter server makes under the table's lock; writing the file happens after, while
training goes on) and how long the write takes, and lookups / updates per second.

    python bench/embedding.py [--rows 10000000] [--batches 200]
"""

import argparse
import os
import resource
import tempfile
import threading
import time

import numpy as np

from psflow import checkpoint
from psflow.embedding_table import EmbeddingTable
from psflow.train.update_rules import UpdateRule
from psflow.transport import memory

DIM = 16
BATCH = 16384
TARGET = 1.5  # resident bytes per row over the ideal


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--batches", type=int, default=200)
    args = parser.parse_args()
    rule = UpdateRule("adagrad", learning_rate=0.05)
    memory.tune_allocator()
    memory.one_heap()
    baseline = rss_bytes()
    table = EmbeddingTable("bench", DIM, initializer={"kind": "truncated_normal",
                                                      "stddev": 0.01, "seed": 1})
    started = time.perf_counter()
    chunk = 1 << 20
    for start in range(0, args.rows, chunk):  # fill: every key once, then one update
        keys = np.arange(start, min(start + chunk, args.rows), dtype=np.int64) * 2654435761
        table.lookup(keys)
        table.apply(rule, keys, np.zeros((keys.size, DIM), np.float32))
        memory.release_free_memory()  # a parameter server does after every 32 MB of traffic
    fill = time.perf_counter() - started
    used = rss_bytes() - baseline
    ideal = 8 + DIM * 4 * 2
    print(f"filled {len(table)} rows in {fill:.1f} s; resident {used / 2**30:.2f} GiB "
          f"(the table counts {table.nbytes() / 2**30:.2f} GiB)")
    ratio = used / len(table) / ideal
    print(f"bytes per row: {used / len(table):.0f} (ideal {ideal}); {ratio:.2f}x, target <= "
          f"{TARGET}x: {'met' if ratio <= TARGET else 'not met'}", flush=True)

    started = time.perf_counter()
    state, pause = table.copy_state(threading.Lock())  # as a parameter server copies it
    copy = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        checkpoint.write_shard(os.path.join(tmp, "shard-0.npz"), {}, {}, 0, {"bench": state})
        write = time.perf_counter() - started
        size = os.path.getsize(os.path.join(tmp, "shard-0.npz"))
    del state
    print(f"checkpoint: copied in {copy:.2f} s a chunk of rows at a time, holding the table at "
          f"most {pause * 1e3:.0f} ms at once; then written in {write:.1f} s "
          f"({size / 2**30:.2f} GiB) while training goes on", flush=True)

    rng = np.random.default_rng(0)
    next_new = args.rows
    batches = []
    for _ in range(min(args.batches, 50)):
        known = (rng.zipf(1.2, size=BATCH - BATCH // 10) - 1) % args.rows
        new = np.arange(next_new, next_new + BATCH // 10)
        next_new += BATCH // 10
        keys = np.concatenate([known, new]).astype(np.int64) * 2654435761
        batches.append(np.unique(keys))
    lookup_s = apply_s = 0.0
    for i in range(args.batches):
        keys = batches[i % len(batches)]
        if i >= len(batches):  # later rounds: the "new" keys were made earlier; make new ones
            keys = keys.copy()
            keys[-(BATCH // 10):] += (i // len(batches)) * (1 << 40)
        t0 = time.perf_counter()
        table.lookup(keys, global_step=i)
        t1 = time.perf_counter()
        table.apply(rule, keys, np.full((keys.size, DIM), 0.01, np.float32), global_step=i)
        t2 = time.perf_counter()
        lookup_s += t1 - t0
        apply_s += t2 - t1
    keys_done = sum(batches[i % len(batches)].size for i in range(args.batches))
    print(f"batches of {BATCH} keys (Zipf, 10% new; {keys_done / args.batches:.0f} distinct): "
          f"lookup+insert {keys_done / lookup_s / 1e6:.2f} M keys/s "
          f"({lookup_s / args.batches * 1e3:.2f} ms a batch), Adagrad update "
          f"{keys_done / apply_s / 1e6:.2f} M keys/s ({apply_s / args.batches * 1e3:.2f} ms "
          f"a batch); {len(table)} rows at the end", flush=True)


if __name__ == "__main__":
    main()
