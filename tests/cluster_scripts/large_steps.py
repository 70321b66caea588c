"""Two variables of 256 KB each (one per parameter server when there are two) take a gradient
of `step + 1` everywhere at the worker's step `step`, with a learning rate of 1/1024, so that
the final values are exact: -(1 + 2 + ... + STEPS) / 1024 in sync mode, where every step
averages the workers' equal gradients. The chief writes them as JSON to the path in argv[1]."""

import json
import sys
import time

import numpy as np

import psflow as tf

STEPS = 30

a = tf.Variable(np.zeros((256, 256), np.float32), name="a")
b = tf.Variable(np.zeros((256, 256), np.float32), name="b")
c = tf.placeholder(tf.float32, shape=(), name="c")
loss = (tf.reduce_sum(a) + tf.reduce_sum(b)) * c
step = tf.train.get_or_create_global_step()
train = tf.train.GradientDescentOptimizer(1 / 1024).minimize(loss, global_step=step)

with tf.train.MonitoredTrainingSession() as sess:
    for k in range(STEPS):
        sess.run(train, {c: np.float32(k + 1)})
    if sess.is_chief:
        deadline = time.monotonic() + 60
        while sess.run(step) < STEPS and time.monotonic() < deadline:
            time.sleep(0.05)
        values = sess.run([a, b])
        with open(sys.argv[1], "w") as out:
            json.dump({"step": int(sess.run(step)),
                       "a": sorted(set(values[0].ravel().tolist())),
                       "b": sorted(set(values[1].ravel().tolist()))}, out)
