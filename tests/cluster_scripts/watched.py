"""Each worker trains a linear model for STEPS steps of batch 16, then waits (at most 60 s)
until the file in argv[1] exists, so that its metrics can be read while the job runs."""

import os
import sys
import time

import numpy as np

import psflow as tf

STEPS = 30
BATCH = 16

x = tf.placeholder(tf.float32, shape=(None, 4), name="x")
y = tf.placeholder(tf.float32, shape=(None,), name="y")
w = tf.Variable(np.zeros(4, np.float32), name="w")
loss = tf.reduce_mean(tf.square(tf.reduce_sum(x * w, axis=1) - y))
step = tf.train.get_or_create_global_step()
train = tf.train.GradientDescentOptimizer(0.05).minimize(loss, global_step=step)
rng = np.random.default_rng(tf.train.task_config_from_env().task_index)

with tf.train.MonitoredTrainingSession() as sess:
    for _ in range(STEPS):
        bx = rng.normal(size=(BATCH, 4)).astype(np.float32)
        sess.run(train, {x: bx, y: bx @ np.array([1, 2, 3, 4], np.float32)})
    deadline = time.monotonic() + 60
    while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
        time.sleep(0.05)
