"""examples/ctr.py's CTR job in TensorFlow's own parameter-server runtime (TF1's API through
tf.compat.v1): ClusterSpec, a Server per task, replica_device_setter, MonitoredTrainingSession,
asynchronous Adagrad, the tables partitioned over the parameter servers
(`fixed_size_partitioner` on their variable scope).

The model, on Criteo-format lines `label <TAB> I1..I13 <TAB> C1..C26` (an empty count reads 0,
an empty categorical is no value), batch 512, Adagrad(0.05, initial accumulator 0.1):
- counts: numeric_column with log(max(x, 0) + 1), 13 floats;
- fields: categorical_column_with_hash_bucket(C_k, 2**20), the 26 in one table
  (shared_embedding_columns, dimension 17, mean combiner, normal(0.01) init): components 0..15
  of a field's row are its embedding, component 16 its wide weight;
- deep: the counts and the 26 embeddings (429 floats) -> 256 relu -> 128 relu -> 1 (no bias);
- wide: linear_model of crossed_column(pair, 2**20) for four pairs of fields (a bias), plus
  the fields' wide weights summed.

Input, --input tsv: each worker reads the file with TextLineDataset(f).take(train rows)
.shard(workers, index).repeat().batch(512).map(decode_csv).prefetch(2), as examples/ctr.py
does (the last tenth of the lines is held out). --input parsed: each worker parses its shard
before the clock and feeds the same batches, in the same order, by feed_dict.

--table dynamic (TensorFlow Recommenders-Addons, run by PSFLOW_TFRA_PYTHON: TF 2.16.2 with
tensorflow-recommenders-addons 0.8.1): the 26 fields share one TFRA hash table instead
(`dynamic_embedding.get_variable`, int64 keys -> 17 floats, normal(0.01) init, sharded over the
ps tasks by key), as psflow's shared_embedding_columns over categorical_column_with_embedding:
a value's key is its string hashed to int64 (to_hash_bucket_fast(s, 2**63 - 1)), an empty
string is no value, and one lookup of all the fields' values (safe_embedding_lookup_sparse,
mean combiner: a field's one value's row, zeros when empty; it looks key 0 up for an empty
field and zeroes that row) gives the rows. The rest of the model is the same;
DynamicEmbeddingOptimizer wraps the same Adagrad, so that it updates the looked-up rows (each
worker's own TrainableWrapper, which TFRA's patch of replica_device_setter keeps off the ps
tasks) and writes them and their accumulators (a dynamic table beside the rows) back to the ps
tasks as the difference each update made (get_variable's bp_v2=True). TFRA's default
(bp_v2=False) writes the rows back whole, so of two workers' updates of one row at once the
later keeps only its own: measured, that cost 0.008 of AUC (0.762 against 0.770) and is not
the same training, so the peer runs with bp_v2=True.
TFRA 0.8.1's slot patch names `variables.RefVariable`, which TF 2.14 moved to `ref_variable`:
the task sets it back before building the graph; nothing else differs from the bucket table's
job.

The chief prints `throughput: X examples/s (N global steps in S s)` (global steps x batch /
seconds, after a warm-up of a tenth of the steps; every worker waits until all have joined)
and `test auc: A` over the held-out lines (tf.metrics.auc, 2000 thresholds).

    python bench/peers/tf_ctr.py --data clicks.tsv --input tsv --steps 800   # runs a job
    PSFLOW_TFRA_PYTHON=/path/to/tfra/python python bench/peers/tf_ctr.py --data clicks.tsv \
        --table dynamic
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

INTEGERS = [f"I{i}" for i in range(1, 14)]
CATEGORICALS = [f"C{i}" for i in range(1, 27)]
FIELDS = INTEGERS + CATEGORICALS
CROSSES = (("C1", "C2"), ("C3", "C6"), ("C4", "C8"), ("C11", "C15"))
BUCKETS = 1 << 20
DIM = 16
HIDDEN = (256, 128)
BATCH = 512
EVAL_BATCH = 4096
LEARNING_RATE = 0.05
HOLDOUT = 0.1


def count_lines(path, block=1 << 24):
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(block):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")


def train_rows(lines):
    return lines - int(lines * HOLDOUT)


def parse_lines(lines):
    """Raw lines (bytes) into (label float32, {field: column}): counts float32 (empty: 0),
    categoricals as fixed-width bytes arrays (empty: b"")."""
    table = np.array([line.rstrip(b"\n").split(b"\t") for line in lines], dtype=np.bytes_)
    if table.ndim != 2 or table.shape[1] != 1 + len(FIELDS):
        raise ValueError(f"expected {1 + len(FIELDS)} tab-separated fields a line")
    numbers = np.where(table[:, :1 + len(INTEGERS)] == b"", b"0",
                       table[:, :1 + len(INTEGERS)]).astype(np.float32)
    columns = {key: numbers[:, 1 + k] for k, key in enumerate(INTEGERS)}
    columns.update({key: table[:, 1 + len(INTEGERS) + k] for k, key in enumerate(CATEGORICALS)})
    return numbers[:, 0], columns


def read_lines(path, start, stop):
    """Lines start..stop-1 of the file."""
    with open(path, "rb") as f:
        return [line for i, line in enumerate(f) if start <= i < stop]


def read_shard(path, stop, workers, index):
    """Lines index, index + workers, ... below `stop`: `take(stop).shard(workers, index)`."""
    with open(path, "rb") as f:
        return [line for i, line in enumerate(f) if i < stop and i % workers == index]


def batches(labels, columns, size):
    """`.repeat().batch(size)` over these rows: batch k holds rows k*size..k*size+size-1, the
    count wrapping around at the end."""
    k = 0
    while True:
        rows = (k * size + np.arange(size)) % len(labels)
        yield labels[rows], {key: column[rows] for key, column in columns.items()}
        k += 1


def bucket_rows(tf, features):
    """The fields' rows (batch, 26, 17) from one table of 2**20 hash buckets; builds it."""
    fc = tf.feature_column
    fields = [fc.categorical_column_with_hash_bucket(key, BUCKETS) for key in CATEGORICALS]
    shared = fc.shared_embedding_columns(
        fields, DIM + 1, combiner="mean", initializer=tf.random_normal_initializer(stddev=0.01))
    return tf.reshape(fc.input_layer(features, shared), (-1, len(CATEGORICALS), DIM + 1))


def dynamic_rows(tf, de, features, num_ps):
    """The fields' rows (batch, 26, 17) from one TFRA hash table of the fields' strings (as
    int64 keys) over the ps tasks, in one lookup: a field's row is the mean of its values'
    rows (with one value, that row), zeros when it is empty; builds the table."""
    table = de.get_variable("fields", key_dtype=tf.int64, value_dtype=tf.float32, dim=DIM + 1,
                            devices=[f"/job:ps/task:{i}" for i in range(num_ps)],
                            initializer=tf.random_normal_initializer(stddev=0.01),
                            bp_v2=True)
    strings = tf.stack([features[key] for key in CATEGORICALS], axis=1)
    present = tf.where(tf.not_equal(strings, ""))  # (values, 2): row, field
    keys = tf.strings.to_hash_bucket_fast(tf.gather_nd(strings, present), 2**63 - 1)
    ids = tf.SparseTensor(tf.concat([present, tf.zeros_like(present[:, :1])], axis=1), keys,
                          tf.cast(tf.concat([tf.shape(strings), [1]], axis=0), tf.int64))
    rows = de.safe_embedding_lookup_sparse(table, ids, combiner="mean", name="fields_lookup")
    return tf.reshape(rows, (-1, len(CATEGORICALS), DIM + 1))


def model(tf, features, num_ps, de=None):
    """The logits of a batch of raw features; builds the variables (call once). With TFRA's
    dynamic_embedding module `de`, the fields' table is a dynamic one."""
    fc = tf.feature_column
    counts = [fc.numeric_column(key, normalizer_fn=lambda x: tf.log(tf.maximum(x, 0.0) + 1.0))
              for key in INTEGERS]
    crosses = [fc.crossed_column(list(pair), BUCKETS) for pair in CROSSES]
    with tf.variable_scope("tables", partitioner=tf.fixed_size_partitioner(num_ps)):
        rows = bucket_rows(tf, features) if de is None else dynamic_rows(tf, de, features,
                                                                           num_ps)
        linear = fc.linear_model(features, crosses)
    with tf.variable_scope("dnn"):
        h = tf.concat([fc.input_layer(features, counts),
                       tf.reshape(rows[:, :, :DIM], (-1, len(CATEGORICALS) * DIM))], axis=1)
        for i, width in enumerate(HIDDEN):
            w = tf.get_variable(f"w{i}", (h.shape[1], width),
                                initializer=tf.glorot_uniform_initializer())
            b = tf.get_variable(f"b{i}", (width,), initializer=tf.zeros_initializer())
            h = tf.nn.relu(tf.matmul(h, w) + b)
        out = tf.get_variable("out", (h.shape[1], 1), initializer=tf.glorot_uniform_initializer())
    return tf.reshape(tf.matmul(h, out) + linear, (-1,)) + tf.reduce_sum(rows[:, :, DIM], axis=1)


def tsv_input(tf, path, rows, workers, index):
    def parse(lines):
        defaults = [tf.constant([], tf.float32)] + [[0.0]] * len(INTEGERS) + \
            [[""]] * len(CATEGORICALS)
        columns = tf.io.decode_csv(lines, defaults, field_delim="\t", use_quote_delim=False)
        return dict(zip(FIELDS, columns[1:], strict=True)), columns[0]

    data = (tf.data.TextLineDataset(path).take(rows).shard(workers, index).repeat()
            .batch(BATCH).map(parse).prefetch(2))
    features, labels = tf.data.make_one_shot_iterator(data).get_next()
    return features, labels


def task(args):
    import tensorflow.compat.v1 as tf
    tf.disable_v2_behavior()
    de = None
    if args.table == "dynamic":
        from tensorflow.python.ops import ref_variable, variables
        from tensorflow_recommenders_addons import dynamic_embedding as de
        # TFRA 0.8.1 creates the optimizer's slots through a patch that still names
        # variables.RefVariable, which TF 2.14 moved to ref_variable.
        if not hasattr(variables, "RefVariable"):
            variables.RefVariable = ref_variable.RefVariable
    tf.logging.set_verbosity(tf.logging.ERROR)
    started = common.tf_server(tf, args)
    if started is None:
        return
    cluster, config, server = started
    workers, num_ps = cluster.num_tasks("worker"), cluster.num_tasks("ps")
    is_chief = args.index == 0
    lines = count_lines(args.data)
    keep = train_rows(lines)
    worker_device = f"/job:worker/task:{args.index}"
    with tf.device(tf.train.replica_device_setter(worker_device=worker_device,
                                                  cluster=cluster)):
        if args.input == "tsv":
            features, labels = tsv_input(tf, args.data, keep, workers, args.index)
        else:
            features = {key: tf.placeholder(tf.float32, (None,), key) for key in INTEGERS}
            features.update({key: tf.placeholder(tf.string, (None,), key)
                             for key in CATEGORICALS})
            labels = tf.placeholder(tf.float32, (None,), "label")
        logits = model(tf, features, num_ps, de)
        loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels,
                                                                      logits=logits))
        step = tf.train.get_or_create_global_step()
        ready = tf.get_variable("workers_running", (), tf.int32,
                                initializer=tf.zeros_initializer(), trainable=False)
        mark_running = ready.assign_add(1)
        opt = tf.train.AdagradOptimizer(LEARNING_RATE, initial_accumulator_value=0.1)
        if de is not None:  # updates the dynamic table's rows and its own accumulators
            opt = de.DynamicEmbeddingOptimizer(opt)
        train = opt.minimize(loss, global_step=step)
    with tf.device(worker_device):  # the test's counters stay in this task
        auc, auc_update = tf.metrics.auc(labels, tf.sigmoid(logits), num_thresholds=2000)
    if args.input == "parsed":
        fed = batches(*parse_lines(read_shard(args.data, keep, workers, args.index)), BATCH)
    warmup = args.steps // 10
    start = last = None
    with tf.train.MonitoredTrainingSession(master=server.target, is_chief=is_chief,
                                           hooks=[tf.train.StopAtStepHook(last_step=args.steps)],
                                           config=config, save_checkpoint_secs=None,
                                           save_summaries_steps=None, save_summaries_secs=None,
                                           log_step_count_steps=0) as sess:
        sess.run(mark_running)
        # Every worker starts training once all have joined (the non-chief ones wait up to
        # 30 s for the chief's session), so that none races through the steps alone.
        while sess.run(ready) < workers:
            time.sleep(0.05)
        while not sess.should_stop():
            feeds = None
            if args.input == "parsed":
                batch_labels, batch = next(fed)
                feeds = {labels: batch_labels, **{features[k]: v for k, v in batch.items()}}
            _, global_step = sess.run([train, step], feeds)
            last = (time.perf_counter(), global_step)
            if is_chief and start is None and global_step >= warmup:
                start = last
            if global_step >= args.steps - 1:
                break
    if not is_chief:
        return
    if start is not None and last[1] > start[1]:
        steps, seconds = last[1] - start[1], last[0] - start[0]
        print(f"throughput: {steps * BATCH / seconds:.1f} examples/s "
              f"({steps} global steps in {seconds:.2f} s)", flush=True)
    else:
        print(f"no timed steps (warm-up {warmup}, last step {last and last[1]})", flush=True)
    # The held-out lines go in through the same feature tensors (fed, so that the training
    # input is not read), in a session of their own: a monitored one refuses to run after
    # its stop hook fired.
    test_labels, test_columns = parse_lines(read_lines(args.data, keep, lines))
    with tf.Session(server.target, config=config) as sess:
        sess.run(tf.variables_initializer(tf.get_collection(tf.GraphKeys.METRIC_VARIABLES)))
        for lo in range(0, len(test_labels), EVAL_BATCH):
            feeds = {features[k]: v[lo:lo + EVAL_BATCH] for k, v in test_columns.items()}
            sess.run(auc_update, {labels: test_labels[lo:lo + EVAL_BATCH], **feeds})
        print(f"test auc: {sess.run(auc):.4f}  ({len(test_labels)} held-out rows)",
              flush=True)


def interpreter(table):
    """The interpreter of a job: PSFLOW_PEERS_PYTHON's with the bucket table, PSFLOW_TFRA_PYTHON's
    (which must have TFRA, else common.MissingPeer) with the dynamic one."""
    if table == "dynamic":
        return common.python("PSFLOW_TFRA_PYTHON", "tensorflow_recommenders_addons")
    return common.python()


def job(data, steps=800, workers=2, ps=2, input="tsv", timeout=1800, table="buckets"):
    """Runs a job on loopback; returns common.run_job's figures (throughput, auc, cpu).
    Raises common.MissingPeer when table="dynamic" and PSFLOW_TFRA_PYTHON has no TFRA."""
    commands = common.tf_cluster_commands(__file__, interpreter(table), workers, ps, "--data",
                                          data, "--steps", steps, "--input", input, "--table",
                                          table)
    return common.run_job(commands, ("throughput", "auc"), timeout=timeout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="click log in the Criteo TSV format")
    parser.add_argument("--steps", type=int, default=800, help="global training steps")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ps", type=int, default=2)
    parser.add_argument("--input", choices=("tsv", "parsed"), default="tsv",
                        help="read the TSV in the job (tsv), or parse it before the clock")
    parser.add_argument("--table", choices=("buckets", "dynamic"), default="buckets",
                        help="the fields' table: 2**20 hash buckets, or a TFRA dynamic table "
                             "(run by PSFLOW_TFRA_PYTHON)")
    parser.add_argument("--task", dest="role", choices=["ps", "worker"])
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--cluster")
    args = parser.parse_args()
    if args.role:
        task(args)
        return
    try:
        figures = job(args.data, args.steps, args.workers, args.ps, args.input, table=args.table)
    except common.MissingPeer as error:
        sys.exit(f"tf_ctr.py: {error}")
    timed, whole = common.cpu_per_1000(figures, args.steps * BATCH)
    print(f"throughput: {figures['throughput']:.1f} examples/s  test auc: {figures['auc']:.4f}"
          f"  CPU s per 1,000 examples: {timed:.3f} timed, {whole:.3f} whole job")


if __name__ == "__main__":
    main()
