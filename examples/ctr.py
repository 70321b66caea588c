"""Click-through-rate prediction: a wide & deep model on click logs in the Criteo
display-advertising TSV format, built on feature columns and read with tf.data.

Each line is `label <TAB> I1..I13 <TAB> C1..C26`: a 0/1 click, 13 integer counts and 26
categorical values (hex strings in the public Criteo logs; any string works); any feature
may be empty. `TextLineDataset` reads the lines and `decode_csv` parses each batch of them
ahead of the step (an empty count reads as 0, an empty categorical as no value). The columns
do the rest in the graph: each count is `numeric_column` with log1p of its non-negative value
(or, with --numeric buckets, `bucketized_column` over powers of two); the 26 categorical
fields share one table (`shared_embedding_columns`, looked up once a step for all of them):
a hash-keyed table with a row per value (`categorical_column_with_embedding`, --table
dynamic, the default) or a fixed table of --buckets rows its Fingerprint64 picks from
(`categorical_column_with_hash_bucket`, --table buckets). The deep part (`input_layer`)
concatenates the counts with the fields' embeddings and runs a DNN (--hidden); the wide part
(`linear_model`) adds a weight per value of each field and per value of crossed pairs of
fields (`crossed_column`).

Each worker reads its own shard of the training lines (every num_workers-th line); the last
tenth of --data is held out for the test, unless --test names a file. The chief prints
`throughput: X examples/s` (global steps x batch size / seconds, after a warm-up) and, after
training, `test auc: A  logloss: L` over the held-out rows. With --export-dir it exports a
servable that takes the raw fields (I1..I13 as numbers, C1..C26 as strings) and returns the
click probability `ctr`; psflow-serve serves it.

    python examples/make_ctr_data.py /tmp/clicks.tsv --rows 1000000
    launch --workers 2 --ps 2 examples/ctr.py --data /tmp/clicks.tsv --steps 2000
    python examples/ctr.py --data /tmp/clicks.tsv --steps 2000 --export-dir /tmp/models/ctr
"""

import argparse
import os
import sys
import time

import numpy as np

import psflow as tf

fc = tf.feature_column

INTEGERS = [f"I{i}" for i in range(1, 14)]
CATEGORICALS = [f"C{i}" for i in range(1, 27)]
FIELDS = INTEGERS + CATEGORICALS
# Pairs of fields whose values act together (make_ctr_data.py plants such pairs), crossed in
# the wide part.
CROSSES = (("C1", "C2"), ("C3", "C6"), ("C4", "C8"), ("C11", "C15"))
HOLDOUT = 0.1
LEARNING_RATES = {"adagrad": 0.05, "ftrl": 0.05, "adam": 0.001}
COUNT_BOUNDARIES = [float(2 ** k) for k in range(20)]


class DataError(ValueError):
    """A click log that cannot be read."""


# -- reading ----------------------------------------------------------------------------------
def count_lines(path, block=1 << 24):
    """The number of lines of `path` (a last line without a newline counts)."""
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(block):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")


def parse(lines):
    """A batch of lines into ({field: column}, labels): decode_csv with a tab, the label and
    counts as float32 (empty: 0), the categoricals as strings (empty: "")."""
    defaults = [tf.constant([], tf.float32)] + [[0.0]] * len(INTEGERS) + \
        [[""]] * len(CATEGORICALS)
    columns = tf.io.decode_csv(lines, defaults, field_delim="\t", use_quote_delim=False)
    return dict(zip(FIELDS, columns[1:], strict=True)), columns[0]


def datasets(data, test, batch_size, eval_batch_size, workers, index):
    """(this worker's training dataset, repeated; the held-out dataset, once)."""
    if test:
        train_lines, test_lines = tf.data.TextLineDataset(data), tf.data.TextLineDataset(test)
    else:
        rows = count_lines(data)
        keep = rows - int(rows * HOLDOUT)
        train_lines = tf.data.TextLineDataset(data).take(keep)
        test_lines = tf.data.TextLineDataset(data).skip(keep)
    train = (train_lines.shard(workers, index).repeat().batch(batch_size).map(parse)
             .prefetch(2))
    return train, test_lines.batch(eval_batch_size).map(parse).prefetch(2)


# -- the model --------------------------------------------------------------------------------
def log_count(x):
    return tf.log(tf.maximum(x, 0.0) + 1.0)


def columns(table, buckets, numeric, dim):
    """(the counts' columns, the fields' embedding columns, the wide part's columns). The
    fields share one table, as Criteo's fields have values of their own; a value's row holds
    its embedding (`dim` wide) and, last, its wide weight: one lookup serves both parts."""
    counts = [fc.numeric_column(key, normalizer_fn=log_count) for key in INTEGERS]
    if numeric == "buckets":
        counts = [fc.bucketized_column(c, COUNT_BOUNDARIES) for c in counts]
    if table == "dynamic":
        fields = [fc.categorical_column_with_embedding(key) for key in CATEGORICALS]
    else:
        fields = [fc.categorical_column_with_hash_bucket(key, buckets) for key in CATEGORICALS]
    embeddings = fc.shared_embedding_columns(
        fields, dim + 1, initializer=tf.random_normal_initializer(stddev=0.01, seed=1))
    crosses = [fc.crossed_column(pair, buckets) for pair in CROSSES]
    return counts, embeddings, crosses + (counts if numeric == "buckets" else [])


def logits_of(features, args):
    """The model's logits for a batch of features; the variables are shared by every call."""
    counts, embeddings, wide_columns = columns(args.table, args.buckets, args.numeric,
                                               args.dim)
    fields = len(CATEGORICALS)
    with tf.variable_scope("ctr", reuse=tf.AUTO_REUSE):
        rows = tf.reshape(fc.input_layer(features, embeddings), (-1, fields, args.dim + 1))
        h = tf.concat([fc.input_layer(features, counts),
                       tf.reshape(tf.slice(rows, [0, 0, 0], [-1, -1, args.dim]),
                                  (-1, fields * args.dim))], axis=1)
        width_in = h.shape[1]
        for i, width in enumerate(args.hidden):
            w = tf.get_variable(f"dnn/w{i}", shape=(width_in, width),
                                initializer=tf.glorot_uniform_initializer(seed=10 + i))
            b = tf.get_variable(f"dnn/b{i}", shape=(width,), initializer=tf.zeros_initializer())
            h, width_in = tf.nn.relu(h @ w + b), width
        out = tf.get_variable("dnn/out", shape=(width_in, 1),
                              initializer=tf.glorot_uniform_initializer(seed=99))
        wide = tf.reduce_sum(tf.slice(rows, [0, 0, args.dim], [-1, -1, 1]), axis=[1, 2])
        return tf.reshape(h @ out + fc.linear_model(features, wide_columns), (-1,)) + wide


def build(args, train_data, test_data):
    train_features, train_labels = train_data.make_one_shot_iterator().get_next()
    logits = logits_of(train_features, args)
    loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=train_labels,
                                                                  logits=logits))
    step = tf.train.get_or_create_global_step()
    if args.optimizer == "adagrad":
        opt = tf.train.AdagradOptimizer(args.learning_rate)
    elif args.optimizer == "ftrl":
        opt = tf.train.FtrlOptimizer(args.learning_rate, l2_regularization_strength=1e-6)
    else:
        opt = tf.train.AdamOptimizer(args.learning_rate)
    train = opt.minimize(loss, global_step=step)

    test = test_data.make_initializable_iterator()
    features, labels = test.get_next()
    test_logits = logits_of(features, args)
    ctr = tf.sigmoid(test_logits)
    losses = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=test_logits)
    auc, auc_update = tf.metrics.auc(labels, ctr, num_thresholds=2000)
    logloss, logloss_update = tf.metrics.mean(losses)
    return {"loss": loss, "step": step, "train": train, "test": test, "ctr": ctr,
            "labels": labels, "auc": auc, "logloss": logloss,
            "evaluate": [auc_update, logloss_update],
            "signature": ({key: features[key] for key in FIELDS}, {"ctr": ctr})}


def evaluate(sess, model, predictions=None):
    """Runs the held-out rows through the model; returns (auc, logloss, rows). Writes each
    row's click probability to `predictions` (a path) when given."""
    sess.run(model["test"].initializer)
    rows, written = 0, []
    while True:
        try:
            ctr, labels, _ = sess.run([model["ctr"], model["labels"], model["evaluate"]])
        except tf.errors.OutOfRangeError:
            break
        rows += len(labels)
        if predictions:
            written.append(ctr)
    if predictions:
        np.savetxt(predictions, np.concatenate(written), fmt="%.9g")
    auc, logloss = sess.run([model["auc"], model["logloss"]])
    return auc, logloss, rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="click log in the Criteo TSV format")
    parser.add_argument("--test", help="held-out click log (default: the last tenth of --data)")
    parser.add_argument("--steps", type=int, default=1000, help="global training steps")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--table", choices=("dynamic", "buckets"), default="dynamic",
                        help="hash-keyed tables with a row per value (default), or fixed "
                        "tables of --buckets rows")
    parser.add_argument("--buckets", type=int, default=1 << 20,
                        help="rows of the fixed tables (--table buckets) and of the crosses")
    parser.add_argument("--numeric", choices=("log", "buckets"), default="log",
                        help="counts as log1p (default), or bucketized over powers of two")
    parser.add_argument("--dim", type=int, default=16, help="embedding width")
    parser.add_argument("--hidden", default="256,128", help="DNN layer widths")
    parser.add_argument("--optimizer", choices=sorted(LEARNING_RATES), default="adagrad")
    parser.add_argument("--learning-rate", type=float,
                        help="default: adagrad 0.05, ftrl 0.05, adam 0.001")
    parser.add_argument("--warmup", type=int, help="global steps before the throughput clock "
                        "starts (default: a tenth of --steps)")
    parser.add_argument("--eval-batch-size", type=int, default=4096)
    parser.add_argument("--export-dir", help="export servables as numbered versions here "
                        "(default: launch --export-dir's)")
    parser.add_argument("--predictions", help="write each held-out row's click probability "
                        "to this file, one a line")
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "buckets", "dim", "eval_batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got "
                         f"{getattr(args, name)}")
    for path in filter(None, (args.data, args.test)):
        if not os.path.isfile(path):
            parser.error(f"no such file: {path}")
        if os.path.getsize(path) == 0:
            parser.error(f"{path} is empty")
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
    train_data, test_data = datasets(args.data, args.test, args.batch_size,
                                     args.eval_batch_size, workers, index)
    model = build(args, train_data, test_data)
    hooks = [tf.train.StopAtStepHook(last_step=args.steps)]
    start = None
    with tf.train.MonitoredTrainingSession(hooks=hooks, export_dir=args.export_dir,
                                           export_signature=model["signature"]) as sess:
        is_chief = sess.is_chief
        local_steps, longest = 0, 0.0
        while not sess.should_stop():
            began = time.perf_counter()
            _, global_step = sess.run([model["train"], model["step"]])
            local_steps += 1
            longest = max(longest, time.perf_counter() - began)
            if start is None and global_step >= args.warmup:
                start = (time.perf_counter(), global_step)
        end = (time.perf_counter(), int(sess.run(model["step"])))
        # Every step pushed its gradients once: the steps of all workers add up to the
        # global step, whatever failed over meanwhile.
        print(f"this worker: {local_steps} steps, the longest {longest:.2f} s", flush=True)
        if is_chief:
            if start is not None and end[1] > start[1]:
                steps, seconds = end[1] - start[1], end[0] - start[0]
                print(f"throughput: {steps * args.batch_size / seconds:.1f} examples/s "
                      f"({steps} global steps in {seconds:.2f} s)", flush=True)
            auc, logloss, rows = evaluate(sess, model, args.predictions)
            if rows == 0:
                raise DataError(f"no held-out rows in {args.test or args.data}")
            print(f"test auc: {auc:.4f}  logloss: {logloss:.4f}  ({rows} held-out rows)",
                  flush=True)


if __name__ == "__main__":
    try:
        main()
    except (DataError, tf.errors.InvalidArgumentError) as exc:
        sys.exit(f"ctr.py: {exc}")
