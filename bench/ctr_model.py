"""The training job bench/ctr.py times: a wide & deep click-through-rate model.

26 categorical fields hashed into one embedding table (--rows x --dim) and one wide table
(--rows x 1), 13 dense features, a DNN 256-128, batch 512, Adagrad. Ids follow a Zipf law,
as click logs do, so a batch touches a few thousand distinct rows. With --whole the chief
also fetches both tables every step, which makes every step pull them whole (the path
before sparse reads), for comparison.

The chief prints `throughput: X examples/s` from the global step after a warm-up, as
bench/cluster_model.py does.
"""

import argparse
import time

import numpy as np

import psflow as tf

FIELDS, DENSE = 26, 13


def build(rows, dim):
    ids = tf.placeholder(tf.int64, shape=(None, FIELDS), name="ids")
    dense = tf.placeholder(tf.float32, shape=(None, DENSE), name="dense")
    labels = tf.placeholder(tf.int64, shape=(None,), name="labels")
    table = tf.get_variable("embedding", shape=(rows, dim),
                            initializer=tf.random_normal_initializer(stddev=0.01, seed=1))
    wide = tf.get_variable("wide", shape=(rows, 1), initializer=tf.zeros_initializer())
    h = tf.concat([tf.reshape(tf.gather(table, ids), (-1, FIELDS * dim)), dense], axis=1)
    for i, width in enumerate((256, 128)):
        w = tf.get_variable(f"dnn/w{i}", shape=(FIELDS * dim + DENSE if i == 0 else 256, width))
        h = tf.nn.relu(h @ w + tf.Variable(tf.zeros((width,)), name=f"dnn/b{i}"))
    out = tf.get_variable("dnn/out", shape=(128, 2))
    wide_logit = tf.reduce_sum(tf.gather(wide, ids), axis=1)  # (batch, 1)
    logits = h @ out + wide_logit * np.array([0.0, 1.0], np.float32)
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels,
                                                                         logits=logits))
    step = tf.train.get_or_create_global_step()
    train = tf.train.AdagradOptimizer(0.05).minimize(loss, global_step=step)
    return (ids, dense, labels), (table, wide), step, train


def batches(rows, batch, count, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        ids = (rng.zipf(1.3, size=(batch, FIELDS)) * 2654435761 +
               np.arange(FIELDS) * 97) % rows  # per-field hashing into the shared table
        out.append((ids.astype(np.int64), rng.random((batch, DENSE), dtype=np.float32),
                    rng.integers(0, 2, size=batch)))
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=4 * 1024 * 1024)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--whole", action="store_true")
    args = parser.parse_args()

    (ids, dense, labels), tables, step, train = build(args.rows, args.dim)
    task = tf.train.task_config_from_env()
    data = batches(args.rows, args.batch_size, 32, seed=task.worker_index if task else 0)
    fetches = [train, step] + (list(tables) if args.whole else [])
    distinct = np.mean([np.unique(b[0]).size for b in data])
    hooks = [tf.train.StopAtStepHook(last_step=args.steps)]
    start = None
    store = None
    with tf.train.MonitoredTrainingSession(hooks=hooks) as sess:
        if task is not None:
            store = sess.session.store  # the distributed store, to count its traffic
        i = 0
        while not sess.should_stop():
            b = data[i % len(data)]
            global_step = sess.run(fetches, {ids: b[0], dense: b[1], labels: b[2]})[1]
            i += 1
            if start is None and global_step >= args.warmup:
                start = (time.perf_counter(), global_step, i,
                         store.traffic() if store else (0, 0))
        end = (time.perf_counter(), int(sess.run(step)), i, store.traffic() if store else (0, 0))
    if sess.is_chief and start is not None:
        steps, seconds = end[1] - start[1], end[0] - start[0]
        own_steps = max(end[2] - start[2], 1)
        sent, received = ((e - s) / own_steps / 1024 for s, e in zip(start[3], end[3], strict=True))
        print(f"throughput: {steps * args.batch_size / seconds:.1f} examples/s ({steps} steps "
              f"in {seconds:.2f} s; {distinct:.0f} distinct ids per batch; wire per step "
              f"{sent + received:.0f} KiB: {sent:.0f} sent, {received:.0f} received)",
              flush=True)


if __name__ == "__main__":
    main()
