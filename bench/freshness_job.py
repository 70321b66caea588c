"""The training job bench/freshness.py follows: bench/serve_model.py's CTR model (the tables
"embedding" and "wide" and the DNN that a psflow-serve version of it reads), trained with
Adagrad on Zipf-drawn ids over `--rows` keys and labels drawn from a fixed rule, for
`--seconds`, at full speed. The chief prints `throughput: X examples/s (N global steps in S
s)` over the steps after `--warmup` seconds, as the other CTR jobs do.

    launch --workers 2 --ps 2 bench/freshness_job.py --rows 200000 --seconds 60
"""

import argparse
import time

import numpy as np
import serve_model as model

import psflow as tf

BATCH = 512


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="keys per table")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to train")
    parser.add_argument("--warmup", type=float, default=3.0,
                        help="seconds before the timed window")
    args = parser.parse_args(argv)
    task = tf.train.task_config_from_env()
    index = task.worker_index if task else 0
    feeds = []
    for k in range(32):  # batches drawn once: the job's time goes to training
        ids, dense = model.rows_of(args.rows, BATCH, seed=1000 * index + k)
        labels = (dense[:, 0] + (ids[:, 0] % 7 == 0) > 0.8).astype(np.float32)
        feeds.append((ids, dense, labels))
    (ids, dense), _, prob = model.build()
    labels = tf.placeholder(tf.float32, (None,), name="labels")
    p = tf.clip_by_value(tf.squeeze(prob, axis=1), 1e-6, 1 - 1e-6)
    loss = -tf.reduce_mean(labels * tf.log(p) + (1 - labels) * tf.log(1 - p))
    step = tf.train.get_or_create_global_step()
    train = tf.train.AdagradOptimizer(0.05).minimize(loss, global_step=step)
    start = time.perf_counter()
    timed = None
    with tf.train.MonitoredTrainingSession() as sess:
        k = 0
        while time.perf_counter() - start < args.seconds and not sess.should_stop():
            batch_ids, batch_dense, batch_labels = feeds[k % len(feeds)]
            _, global_step = sess.run([train, step], {ids: batch_ids, dense: batch_dense,
                                                      labels: batch_labels})
            k += 1
            if timed is None and time.perf_counter() - start >= args.warmup:
                timed = (time.perf_counter(), global_step)
        end = (time.perf_counter(), int(sess.run(step)))
        if sess.is_chief and timed is not None and end[1] > timed[1]:
            steps, seconds = end[1] - timed[1], end[0] - timed[0]
            print(f"throughput: {steps * BATCH / seconds:.1f} examples/s ({steps} global steps "
                  f"in {seconds:.2f} s)", flush=True)


if __name__ == "__main__":
    main()
