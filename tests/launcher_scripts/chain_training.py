"""A worker script for shards run as chains: trains an embedding table and a dense layer for
STEPS steps of fixed data (the same whatever the number of shards or replicas); the chief
writes the trained rows, the weights and the global step as JSON to the path in argv[1].
argv[2], if given, is a pause in seconds after each step (for a test to act mid-run)."""

import json
import sys
import time

import numpy as np

import psflow as tf

STEPS = 40

keys = tf.placeholder(tf.int64, shape=(None, 2), name="keys")
y = tf.placeholder(tf.float32, shape=(None,), name="y")
table = tf.get_embedding_variable("emb", embedding_dim=4)
w = tf.Variable(np.ones(4, np.float32), name="w")
rows = tf.nn.embedding_lookup(table, keys)
loss = tf.reduce_mean(tf.square(tf.reduce_sum(rows * w, axis=[1, 2]) - y))
step = tf.train.get_or_create_global_step()
train = tf.train.AdagradOptimizer(0.3).minimize(loss, global_step=step)
rng = np.random.default_rng(11)
data = [(rng.integers(0, 40, size=(6, 2)), rng.normal(size=6).astype(np.float32))
        for _ in range(STEPS)]

with tf.train.MonitoredTrainingSession() as sess:
    for k, t in data:
        sess.run(train, {keys: k, y: t})
        time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 0)
    if sess.is_chief:
        probe = np.arange(40).repeat(2).reshape(-1, 2)
        trained, weights, final_step = sess.run([rows, w, step], {keys: probe})
        with open(sys.argv[1], "w") as out:
            json.dump({"rows": trained.tolist(), "w": weights.tolist(),
                       "step": int(final_step)}, out)
