"""Click-through-rate prediction: a wide & deep model on click logs in the Criteo
display-advertising TSV format.

Each line is `label <TAB> I1..I13 <TAB> C1..C26`: a 0/1 click, 13 integer counts and 26
categorical values (hex strings in the public Criteo logs; any string works); any feature
may be empty. Categorical values are hashed per field into int64 keys. With --table dynamic
(the default) each key has its own row in hash-keyed embedding and wide tables
(get_embedding_variable), created when the key first shows up; with --table buckets a key's
row in fixed tables of --buckets rows is the key modulo --buckets, as TF1 forces (unrelated
values then share rows). The deep part concatenates the 26
embeddings with log1p of the counts and runs a DNN (--hidden); the wide part adds one learned
weight per key. Each step reads only the table rows its batch touches.

Each worker streams its own share of the training rows (the file is never loaded whole);
the last tenth of --data is held out for the test, unless --test names a file. The chief
prints `throughput: X examples/s` (global steps x batch size / seconds, after a warm-up) and,
after training, `test auc: A  logloss: L` over the held-out rows.

    python examples/make_ctr_data.py /tmp/clicks.tsv --rows 1000000
    launch --workers 2 --ps 2 examples/ctr.py --data /tmp/clicks.tsv --steps 2000
    python examples/ctr.py --data /tmp/clicks.tsv --steps 2000     # one process
"""

import argparse
import os
import queue
import sys
import threading
import time
import zlib

import numpy as np

import psflow as tf

LABELS, INTEGERS, CATEGORICALS = 1, 13, 26
COLUMNS = LABELS + INTEGERS + CATEGORICALS
HOLDOUT = 0.1
LEARNING_RATES = {"adagrad": 0.05, "ftrl": 0.05, "adam": 0.001}
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


class DataError(ValueError):
    """A line of the click log that is not in the format."""


# -- reading ----------------------------------------------------------------------------------
def byte_ranges(path, test_path, workers):
    """(training ranges, one per worker, and the test range) as (path, start, end) byte spans:
    a line belongs to the span it starts in, so the spans share out whole lines."""
    size = os.path.getsize(path)
    if size == 0:
        raise DataError(f"{path} is empty")
    if test_path:
        train_end, test = size, (test_path, 0, os.path.getsize(test_path))
    else:
        train_end = int(size * (1.0 - HOLDOUT))
        test = (path, train_end, size)
    bounds = [train_end * i // workers for i in range(workers + 1)]
    return [(path, bounds[i], bounds[i + 1]) for i in range(workers)], test


def read_lines(path, start, end, chunk=1 << 20):
    """Yields (byte offset, line) for each line of `path` that starts in [start, end)."""
    with open(path, "rb") as f:
        position = start
        if start > 0:
            f.seek(start - 1)
            position = start - 1 + len(f.readline())  # the rest of a line begun earlier
        while position < end:
            lines = f.readlines(chunk)
            if not lines:
                return
            for line in lines:
                if position >= end:
                    return
                yield position, line
                position += len(line)


def key_hash(keys, field):
    """Per-field 64-bit hashes of the categorical values' integer keys (splitmix64 of the
    key mixed with the field), as non-negative int64."""
    with np.errstate(over="ignore"):
        z = keys.astype(np.uint64) ^ (np.uint64(field + 1) * np.uint64(0x9E3779B97F4A7C15))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9) & _MASK
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB) & _MASK
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(1)).astype(np.int64)


class Parser:
    """Lines of the click log into (labels, log1p counts, bucket ids)."""

    def __init__(self, path, buckets):
        self.path, self.buckets = path, buckets  # buckets None: the keys themselves
        self._keys = {"": -1}  # value string -> integer key (empty: missing)

    def _key(self, text):
        try:
            return int(text, 16) if len(text) <= 15 else zlib.crc32(text.encode()) + (1 << 60)
        except ValueError:
            return zlib.crc32(text.encode()) + (1 << 60)

    def __call__(self, batch):
        offsets = [offset for offset, _ in batch]
        try:
            text = b"".join(line for _, line in batch).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{self.path}: the lines from byte {offsets[0]} are not UTF-8 "
                            f"text ({exc.reason})") from None
        rows = [line.rstrip("\r").split("\t") for line in text.split("\n")[:len(batch)]]
        for offset, row in zip(offsets, rows, strict=True):
            if len(row) != COLUMNS:
                raise DataError(f"{self.path}: the line at byte {offset} has {len(row)} "
                                f"tab-separated fields, expected {COLUMNS} (label, "
                                f"{INTEGERS} integers, {CATEGORICALS} categoricals)")
        try:
            labels = np.array([row[0] for row in rows]).astype(np.int64)
            counts = np.array([[x or "0" for x in row[1:1 + INTEGERS]]
                               for row in rows]).astype(np.int64)
        except ValueError as exc:
            raise DataError(f"{self.path}: lines from byte {offsets[0]}: a label or an "
                            f"integer feature is not an integer ({exc})") from None
        if ((labels != 0) & (labels != 1)).any():
            bad = int(np.flatnonzero((labels != 0) & (labels != 1))[0])
            raise DataError(f"{self.path}: the line at byte {offsets[bad]} has label "
                            f"{labels[bad]}, expected 0 or 1")
        keys = self._keys
        if len(keys) > 4_000_000:  # a bounded cache of parsed values
            keys.clear()
            keys[""] = -1
        values = np.array([[keys[x] if x in keys else keys.setdefault(x, self._key(x))
                            for x in row[1 + INTEGERS:]] for row in rows], dtype=np.int64)
        ids = np.empty_like(values)
        for field in range(CATEGORICALS):
            ids[:, field] = key_hash(values[:, field], field)
        if self.buckets is not None:
            ids %= self.buckets
        dense = np.log1p(np.maximum(counts, 0)).astype(np.float32)
        return labels.astype(np.float32), dense, ids


def batches(span, parser, batch_size, repeat):
    """Parsed batches of the lines in `span`, over and over when `repeat`."""
    path, start, end = span
    while True:
        batch, produced = [], False
        for item in read_lines(path, start, end):
            batch.append(item)
            if len(batch) == batch_size:
                produced = True
                yield parser(batch)
                batch = []
        if batch:
            produced = True
            yield parser(batch)
        if not repeat:
            return
        if not produced:
            raise DataError(f"{path}: no rows between bytes {start} and {end}")


class Prefetcher:
    """Parses the next batches in a thread while the current step runs."""

    def __init__(self, source, depth=4):
        self._queue = queue.Queue(depth)
        self._thread = threading.Thread(target=self._fill, args=(source,), daemon=True)
        self._thread.start()

    def _fill(self, source):
        try:
            for item in source:
                self._queue.put(("batch", item))
            self._queue.put(("end", None))
        except Exception as exc:  # handed to the reader, raised there
            self._queue.put(("error", exc))

    def __iter__(self):
        while True:
            kind, item = self._queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item


# -- the model --------------------------------------------------------------------------------
def build(buckets, dim, hidden, optimizer, learning_rate):
    """The model; `buckets` None makes hash-keyed tables (one row per key)."""
    labels = tf.placeholder(tf.float32, shape=(None,), name="labels")
    dense = tf.placeholder(tf.float32, shape=(None, INTEGERS), name="dense")
    ids = tf.placeholder(tf.int64, shape=(None, CATEGORICALS), name="ids")
    if buckets is None:
        table = tf.get_embedding_variable(
            "embedding", dim, initializer=tf.random_normal_initializer(stddev=0.01, seed=1))
        wide = tf.get_embedding_variable("wide", 1, initializer=tf.zeros_initializer())
    else:
        table = tf.get_variable("embedding", shape=(buckets, dim),
                                initializer=tf.random_normal_initializer(stddev=0.01, seed=1))
        wide = tf.get_variable("wide", shape=(buckets, 1), initializer=tf.zeros_initializer())
    h = tf.concat([tf.reshape(tf.nn.embedding_lookup(table, ids), (-1, CATEGORICALS * dim)),
                   dense], axis=1)
    width_in = CATEGORICALS * dim + INTEGERS
    for i, width in enumerate(hidden):
        w = tf.get_variable(f"dnn/w{i}", shape=(width_in, width),
                            initializer=tf.glorot_uniform_initializer(seed=10 + i))
        b = tf.get_variable(f"dnn/b{i}", shape=(width,), initializer=tf.zeros_initializer())
        h, width_in = tf.nn.relu(h @ w + b), width
    out = tf.get_variable("dnn/out", shape=(width_in, 1),
                          initializer=tf.glorot_uniform_initializer(seed=99))
    bias = tf.get_variable("bias", shape=(), initializer=tf.zeros_initializer())
    wide_logit = tf.reduce_sum(tf.reshape(tf.nn.embedding_lookup(wide, ids),
                                          (-1, CATEGORICALS)), axis=1)
    logits = tf.reshape(h @ out, (-1,)) + wide_logit + bias
    losses = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    loss = tf.reduce_mean(losses)
    step = tf.train.get_or_create_global_step()
    if optimizer == "adagrad":
        opt = tf.train.AdagradOptimizer(learning_rate)
    elif optimizer == "ftrl":
        opt = tf.train.FtrlOptimizer(learning_rate, l2_regularization_strength=1e-6)
    else:
        opt = tf.train.AdamOptimizer(learning_rate)
    train = opt.minimize(loss, global_step=step)
    auc, auc_update = tf.metrics.auc(labels, tf.sigmoid(logits), num_thresholds=2000)
    logloss, logloss_update = tf.metrics.mean(losses)
    return {"labels": labels, "dense": dense, "ids": ids, "loss": loss, "step": step,
            "train": train, "auc": auc, "logloss": logloss,
            "evaluate": [auc_update, logloss_update]}


def feed(model, batch):
    labels, dense, ids = batch
    return {model["labels"]: labels, model["dense"]: dense, model["ids"]: ids}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="click log in the Criteo TSV format")
    parser.add_argument("--test", help="held-out click log (default: the last tenth of --data)")
    parser.add_argument("--steps", type=int, default=1000, help="global training steps")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--table", choices=("dynamic", "buckets"), default="dynamic",
                        help="hash-keyed tables with a row per key (default), or fixed tables "
                        "of --buckets rows")
    parser.add_argument("--buckets", type=int, default=1 << 20,
                        help="rows of the embedding and wide tables with --table buckets")
    parser.add_argument("--dim", type=int, default=16, help="embedding width")
    parser.add_argument("--hidden", default="256,128", help="DNN layer widths")
    parser.add_argument("--optimizer", choices=sorted(LEARNING_RATES), default="adagrad")
    parser.add_argument("--learning-rate", type=float,
                        help="default: adagrad 0.05, ftrl 0.05, adam 0.001")
    parser.add_argument("--warmup", type=int, help="global steps before the throughput clock "
                        "starts (default: a tenth of --steps)")
    parser.add_argument("--eval-batch-size", type=int, default=4096)
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "buckets", "dim", "eval_batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got "
                         f"{getattr(args, name)}")
    for path in filter(None, (args.data, args.test)):
        if not os.path.isfile(path):
            parser.error(f"no such file: {path}")
    try:
        args.hidden = [int(w) for w in args.hidden.split(",") if w.strip()]
    except ValueError:
        parser.error(f"--hidden takes comma-separated widths, got {args.hidden!r}")
    if any(w < 1 for w in args.hidden):
        parser.error(f"--hidden widths must be positive, got {args.hidden}")
    if args.learning_rate is None:
        args.learning_rate = LEARNING_RATES[args.optimizer]
    if args.warmup is None:
        args.warmup = args.steps // 10
    return args


def main(argv=None):
    args = parse_args(argv)
    task = tf.train.task_config_from_env()
    workers, index = (task.num_workers, task.worker_index) if task else (1, 0)
    spans, test_span = byte_ranges(args.data, args.test, workers)
    buckets = args.buckets if args.table == "buckets" else None
    model = build(buckets, args.dim, args.hidden, args.optimizer, args.learning_rate)
    training = Prefetcher(batches(spans[index], Parser(args.data, buckets),
                                  args.batch_size, repeat=True))
    hooks = [tf.train.StopAtStepHook(last_step=args.steps)]
    start = end = None
    with tf.train.MonitoredTrainingSession(hooks=hooks) as sess:
        is_chief = sess.is_chief
        for batch in training:
            if sess.should_stop():
                break
            _, global_step = sess.run([model["train"], model["step"]], feed(model, batch))
            if start is None and global_step >= args.warmup:
                start = (time.perf_counter(), global_step)
        end = (time.perf_counter(), int(sess.run(model["step"])))
        if is_chief:
            if start is not None and end[1] > start[1]:
                steps, seconds = end[1] - start[1], end[0] - start[0]
                print(f"throughput: {steps * args.batch_size / seconds:.1f} examples/s "
                      f"({steps} global steps in {seconds:.2f} s)", flush=True)
            rows = 0
            test_parser = Parser(test_span[0], buckets)
            for batch in batches(test_span, test_parser, args.eval_batch_size, repeat=False):
                sess.run(model["evaluate"], feed(model, batch))
                rows += len(batch[0])
            if rows == 0:
                raise DataError(f"no held-out rows in {test_span[0]}")
            auc, logloss = sess.run([model["auc"], model["logloss"]])
            print(f"test auc: {auc:.4f}  logloss: {logloss:.4f}  ({rows} held-out rows)",
                  flush=True)


if __name__ == "__main__":
    try:
        main()
    except DataError as exc:
        sys.exit(f"ctr.py: {exc}")
