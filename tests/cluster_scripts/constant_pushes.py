"""Every worker pushes the same constant gradient PUSHES times; the chief waits for every
push to land and writes the variable's final value as JSON to the path in argv[1]."""

import json
import sys
import time

import numpy as np

import psflow as tf

PUSHES = 200
workers = tf.train.task_config_from_env().num_workers

v = tf.Variable(np.zeros(4, dtype=np.float32), name="v")
loss = tf.reduce_sum(v)  # d loss / d v = 1 everywhere
step = tf.train.get_or_create_global_step()
train = tf.train.GradientDescentOptimizer(1.0).minimize(loss, global_step=step)

with tf.train.MonitoredTrainingSession() as sess:
    for _ in range(PUSHES):
        sess.run(train)
    if sess.is_chief:
        deadline = time.monotonic() + 60
        while sess.run(step) < workers * PUSHES and time.monotonic() < deadline:
            time.sleep(0.05)
        with open(sys.argv[1], "w") as out:
            json.dump({"v": sess.run(v).tolist(), "step": int(sess.run(step))}, out)
