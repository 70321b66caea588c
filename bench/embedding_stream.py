"""The training job bench/embedding_job.py runs: a stream of --events events over --keys
distinct int64 keys (each event one key, drawn uniformly, so nearly every key shows up), a
hash-keyed table of dim 16 with Adagrad and a tiny regression on top, checkpointing to
--checkpoint-dir. Each worker trains on its own draws; the chief prints events/s."""

import argparse
import time

import numpy as np

import psflow as tf

parser = argparse.ArgumentParser()
parser.add_argument("--events", type=int, required=True)
parser.add_argument("--keys", type=int, required=True)
parser.add_argument("--batch-size", type=int, default=8192)
parser.add_argument("--checkpoint-dir", required=True)
args = parser.parse_args()

task = tf.train.task_config_from_env()
keys = tf.placeholder(tf.int64, shape=(None,), name="keys")
y = tf.placeholder(tf.float32, shape=(None,), name="y")
table = tf.get_embedding_variable("events", 16,
                                  initializer=tf.random_normal_initializer(stddev=0.01))
w = tf.Variable(np.ones(16, np.float32) / 16, name="w")
loss = tf.reduce_mean(tf.square(tf.reduce_sum(tf.nn.embedding_lookup(table, keys) * w,
                                              axis=1) - y))
step = tf.train.get_or_create_global_step()
train = tf.train.AdagradOptimizer(0.1).minimize(loss, global_step=step)
last_step = -(-args.events // args.batch_size)
rng = np.random.default_rng(task.worker_index if task else 0)
hooks = [tf.train.StopAtStepHook(last_step=last_step)]
with tf.train.MonitoredTrainingSession(checkpoint_dir=args.checkpoint_dir, hooks=hooks,
                                       save_checkpoint_secs=None) as sess:
    started, first = time.perf_counter(), int(sess.session.run(step))
    while not sess.should_stop():
        batch = rng.integers(0, args.keys, size=args.batch_size)
        sess.run(train, {keys: batch * 2654435761 - 2**40, y: (batch % 7).astype(np.float32)})
    done = int(sess.session.run(step))
    seconds = time.perf_counter() - started
if sess.is_chief and done > first:
    print(f"streamed {(done - first) * args.batch_size} events in {seconds:.1f} s: "
          f"{(done - first) * args.batch_size / seconds:.0f} events/s", flush=True)
