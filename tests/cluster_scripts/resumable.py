"""Trains digits-like random data with Adam, and a hash-keyed embedding table (admitting keys
on their second sighting), until global step --last-step, checkpointing to --checkpoint-dir
every 5 steps. Each worker prints the global step it saw before its first
push: the smallest of those is the step the job started from, whichever worker pushed first."""

import argparse

import numpy as np

import psflow as tf
from psflow.worker.data import shard

parser = argparse.ArgumentParser()
parser.add_argument("--checkpoint-dir", required=True)
parser.add_argument("--last-step", type=int, required=True)
args = parser.parse_args()

rng = np.random.default_rng(0)
features = rng.normal(size=(512, 8)).astype(np.float32)
targets = (features @ rng.normal(size=8)).astype(np.float32)
ids = (np.floor(features[:, :2] * 3).astype(np.int64) * 1_000_003 - 10 ** 12)
features, targets, ids = shard(features, targets, ids)

x = tf.placeholder(tf.float32, shape=(None, 8), name="x")
y = tf.placeholder(tf.float32, shape=(None,), name="y")
w = tf.Variable(np.zeros((8, 16), np.float32), name="hidden/w")
v = tf.Variable(np.full(16, 0.1, np.float32), name="out/v")
keys = tf.placeholder(tf.int64, shape=(None, 2), name="keys")
table = tf.get_embedding_variable(
    "ids/emb", 4, ev_option=tf.EmbeddingVariableOption(filter_option=tf.CounterFilter(2)))
bias = tf.reduce_sum(tf.nn.embedding_lookup(table, keys), axis=[1, 2])
loss = tf.reduce_mean(tf.square(tf.reduce_sum(tf.tanh(x @ w) * v, axis=1) + bias - y))
step = tf.train.get_or_create_global_step()
train = tf.train.AdamOptimizer(0.01).minimize(loss, global_step=step)

hooks = [tf.train.StopAtStepHook(last_step=args.last_step)]
with tf.train.MonitoredTrainingSession(checkpoint_dir=args.checkpoint_dir, hooks=hooks,
                                       save_checkpoint_steps=5) as sess:
    print(f"started at global step {int(sess.session.run(step))}", flush=True)
    i = 0
    while not sess.should_stop():
        lo = (i * 16) % (len(features) - 16)
        sess.run(train, {x: features[lo:lo + 16], y: targets[lo:lo + 16],
                         keys: ids[lo:lo + 16]})
        i += 1
