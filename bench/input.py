"""Rows/second of psflow's input pipeline on Criteo-format click logs, on one core.

The lines come from examples/make_ctr_data.py (label, 13 integer counts and 26 hex-string
categoricals, tab-separated, any field may be empty). Figures, each printed:

1. parse: `tf.decode_csv` on batches of lines (label int32, 13 float32 columns, 26 strings),
   run in the calling thread: the parsing alone, and parsing plus the numeric transforms (log
   normalisation of the 13 counts, stacked into one (batch, 13) tensor), against the target
   of 300k rows/s. The 26 string columns come out as `S` arrays; hashing them into table ids
   is not timed here.
2. pipeline: `TextLineDataset(file).batch(B).map(parse)` read through an iterator's
   `get_next()` in a Session (file reading, the read-ahead thread and the hand-over
   included), and the same with `.map(parse_line).batch(B)`, a line at a time.
3. critical path: a training step (an MLP on the 13 transformed counts, one math thread) fed
   by `get_next()` against the same step fed one fixed batch by feed_dict, and the time
   `get_next()` takes for a batch that is ready: what input costs the step.
4. end to end, input included on both sides: examples/ctr.py under the launcher (2 workers,
   2 parameter servers, reading the TSV with its TextLineDataset + decode_csv pipeline), with
   fixed tables (--table buckets) and with hash-keyed ones (--table dynamic), against the
   same job in TensorFlow's TF1 PS runtime reading the same file with TextLineDataset +
   decode_csv (bench/peers/tf_ctr.py --input tsv), run alternately, best of --e2e-rounds:
   examples/s, test AUC, and CPU seconds per 1,000 examples trained, summed over every
   process of the job (read from /proc: bench/peers/common.py's CpuMeter) in the timed steps
   and over the whole job (start-up, table initialisation and the test pass included), with
   psflow/TensorFlow against the target of 1.3x. The peer needs PSFLOW_PEERS_PYTHON naming
   an interpreter with tensorflow.

    python bench/input.py [--rows 200000] [--batch 2048] [--e2e-rows 600000] [--e2e-steps 800]

--rows 0 skips parts 1-3; --e2e-rows 0 skips part 4.
"""

import argparse
import os
import pathlib
import sys
import tempfile
import time

import numpy as np
from threadpoolctl import threadpool_limits

import psflow as tf

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench" / "peers"))
import tf_ctr  # noqa: E402
from ctr_jobs import best_of, make_data, peer_missing, psflow_job  # noqa: E402

TARGET_ROWS_PER_S = 300_000
TARGET_E2E = 1.3
DEFAULTS = [[0]] + [[0.0]] * 13 + [[""]] * 26


def parse(lines):
    """decode_csv and the numeric transforms: (label, log1p of the counts, the strings)."""
    columns = tf.decode_csv(lines, DEFAULTS, field_delim="\t")
    counts = tf.stack(columns[1:14], axis=-1)
    dense = tf.log(tf.maximum(counts, 0.0) + 1.0)
    return {"label": columns[0], "dense": dense, "categorical": tuple(columns[14:])}


def best_rate(fn, rows, rounds):
    """rows/s of the fastest of `rounds` calls of fn()."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return rows / best


def time_parse(path, batch, rounds):
    """(rows/s of decode_csv alone, of decode_csv and the transforms), in this thread."""
    with open(path, "rb") as f:
        lines = np.array(f.read().splitlines())
    batches = [lines[i:i + batch] for i in range(0, len(lines), batch)]
    graph = tf.Graph()
    with graph.as_default():
        records = tf.placeholder(tf.string, (None,))
        columns = tf.decode_csv(records, DEFAULTS, field_delim="\t")
        transformed = parse(records)
    with tf.Session(graph=graph) as sess:
        def run(fetches):
            for b in batches:
                sess.run(fetches, {records: b})
        alone = best_rate(lambda: run(columns), len(lines), rounds)
        with_transforms = best_rate(lambda: run(transformed), len(lines), rounds)
        check = sess.run(transformed, {records: lines[:3]})
    return alone, with_transforms, check


def read_all(next_element):
    rows = 0
    with tf.Session() as sess:
        while True:
            try:
                rows += len(sess.run(next_element)["label"])
            except tf.errors.OutOfRangeError:
                return rows


def time_pipeline(path, batch, line_rows):
    """rows/s of (batch then map, map then batch over the first `line_rows` lines)."""
    ds = tf.data.TextLineDataset(path).batch(batch).map(parse).prefetch(2)
    started = time.perf_counter()
    rows = read_all(ds.make_one_shot_iterator().get_next())
    batched = rows / (time.perf_counter() - started)
    head = os.path.join(os.path.dirname(path), "head.tsv")
    with open(path, "rb") as f, open(head, "wb") as out:
        out.writelines(line for _, line in zip(range(line_rows), f, strict=False))
    ds = tf.data.TextLineDataset(head).map(parse).batch(batch)
    started = time.perf_counter()
    rows = read_all(ds.make_one_shot_iterator().get_next())
    return batched, rows / (time.perf_counter() - started)


def time_steps(path, batch, steps):
    """(seconds per step fed by get_next, per step fed one batch by feed_dict)."""
    def model(dense, label):
        hidden = tf.layers.dense(dense, 512, activation=tf.nn.relu)
        hidden = tf.layers.dense(hidden, 512, activation=tf.nn.relu)
        logits = tf.squeeze(tf.layers.dense(hidden, 1), axis=1)
        loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
            labels=tf.cast(label, tf.float32), logits=logits))
        return tf.train.GradientDescentOptimizer(0.01).minimize(loss)

    figures = []
    for fed in (False, True):
        graph = tf.Graph()
        with graph.as_default():
            tf.set_random_seed(0)
            ds = tf.data.TextLineDataset(path).repeat().batch(batch).map(parse).prefetch(2)
            element = ds.make_one_shot_iterator().get_next()
            dense = tf.placeholder(tf.float32, (None, 13)) if fed else element["dense"]
            label = tf.placeholder(tf.int32, (None,)) if fed else element["label"]
            train = model(dense, label)
            with tf.Session() as sess, threadpool_limits(1):
                sess.run(tf.global_variables_initializer())
                first = sess.run(element)
                feeds = {dense: first["dense"], label: first["label"]} if fed else None
                for _ in range(3):
                    sess.run(train, feeds)
                started = time.perf_counter()
                for _ in range(steps):
                    sess.run(train, feeds)
                figures.append((time.perf_counter() - started) / steps)
                if not fed:  # the hand-over alone: an element that is ready, taken
                    handover = []
                    for _ in range(10):
                        time.sleep(0.05)
                        started = time.perf_counter()
                        sess.run(element)
                        handover.append(time.perf_counter() - started)
                    figures.append(min(handover))
    return figures


def end_to_end(rows, steps, rounds, folder):
    """Part 4: {job: best figures} of psflow's two table kinds and the TensorFlow peer, run
    alternately, each job's best round by examples/s."""
    path = make_data(rows, folder, "clicks.tsv")
    script = ROOT / "examples" / "ctr.py"
    jobs = {"psflow, fixed tables": lambda: psflow_job(script, path, steps, "buckets"),
            "psflow, hash-keyed tables": lambda: psflow_job(script, path, steps, "dynamic")}
    missing = peer_missing()
    if missing:
        print(f"  TensorFlow peer skipped: {missing}", flush=True)
    else:
        jobs["TensorFlow TF1 PS runtime"] = lambda: tf_ctr.job(path, steps, 2, 2, "tsv")
    print(f"end to end on {rows:,} rows, 2 workers / 2 PS, batch {tf_ctr.BATCH}, {steps} "
          f"steps, input included, best of {rounds}:", flush=True)
    best = best_of(jobs, rounds, steps)
    peer = best.get("TensorFlow TF1 PS runtime")
    if peer:
        for name in ("psflow, fixed tables", "psflow, hash-keyed tables"):
            ratio = best[name]["throughput"] / peer["throughput"]
            verdict = "met" if ratio >= TARGET_E2E else "not met"
            print(f"  {name} / TensorFlow: {ratio:.2f}x examples/s (target >= {TARGET_E2E}x: "
                  f"{verdict}); CPU per example "
                  f"{best[name]['timed_cpu_per_1000'] / peer['timed_cpu_per_1000']:.2f}x timed, "
                  f"{best[name]['cpu_per_1000'] / peer['cpu_per_1000']:.2f}x whole job",
                  flush=True)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--line-rows", type=int, default=20_000,
                        help="rows read a line at a time (.map(parse).batch(B))")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--e2e-rows", type=int, default=600_000,
                        help="rows of the end-to-end comparison's click log (0 skips it)")
    parser.add_argument("--e2e-steps", type=int, default=800)
    parser.add_argument("--e2e-rounds", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        if args.rows:
            parts_1_to_3(args, folder)
        if args.e2e_rows:
            end_to_end(args.e2e_rows, args.e2e_steps, args.e2e_rounds, folder)


def parts_1_to_3(args, folder):
    """Parts 1-3 on a file of --rows rows."""
    path = make_data(args.rows, folder)
    size = os.path.getsize(path)
    print(f"{args.rows} Criteo-format rows ({size / args.rows:.0f} bytes a line), "
          f"batches of {args.batch}")
    alone, transformed, check = time_parse(path, args.batch, args.rounds)
    print(f"  decode_csv alone (40 columns; the 26 strings as S arrays, not hashed): "
          f"{alone:,.0f} rows/s")
    verdict = "met" if transformed >= TARGET_ROWS_PER_S else "NOT met"
    print(f"  decode_csv + log normalisation of the 13 counts: {transformed:,.0f} rows/s "
          f"(target >= {TARGET_ROWS_PER_S:,}: {verdict})")
    print(f"    first rows: labels {check['label'].tolist()}, "
          f"dense[0] {np.round(check['dense'][0], 3).tolist()}, "
          f"C1 {[c.decode() for c in check['categorical'][0]]}")
    batched, by_line = time_pipeline(path, args.batch, args.line_rows)
    print(f"  TextLineDataset.batch(B).map(parse) through get_next: {batched:,.0f} rows/s")
    print(f"  TextLineDataset.map(parse).batch(B), a line at a time: {by_line:,.0f} rows/s "
          f"({batched / by_line:.0f}x slower)")
    from_input, handover, from_feed = time_steps(path, args.batch, args.steps)
    print(f"  a training step (MLP 13-512-512-1, batch {args.batch}, one math thread) fed by "
          f"get_next: {from_input * 1e3:.1f} ms; fed one batch by feed_dict: "
          f"{from_feed * 1e3:.1f} ms ({(from_input / from_feed - 1) * 100:+.1f}% with the "
          f"input pipeline running beside it)")
    print(f"  taking a batch that is ready (get_next's hand-over): {handover * 1e3:.2f} ms")


if __name__ == "__main__":
    sys.exit(main())
