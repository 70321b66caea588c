"""Linear regression trained asynchronously; the chief writes the final weights as JSON to
the path given as the first argument."""

import json
import sys

import numpy as np

import psflow as tf
from psflow.worker.data import shard

rng = np.random.default_rng(0)
TRUE_W = np.array([[2.0], [-3.0], [0.5]])
features = rng.normal(size=(512, 3))
targets = features @ TRUE_W + 4.0
my_features, my_targets = shard(features, targets)

x = tf.placeholder(tf.float64, shape=(None, 3), name="x")
y = tf.placeholder(tf.float64, shape=(None, 1), name="y")
w = tf.Variable(np.zeros((3, 1)), name="w")
b = tf.Variable(np.zeros(1), name="b")
loss = tf.reduce_mean(tf.square(x @ w + b - y))
step = tf.train.get_or_create_global_step()
train = tf.train.GradientDescentOptimizer(0.05).minimize(loss, global_step=step)

with tf.train.MonitoredTrainingSession(hooks=[tf.train.StopAtStepHook(last_step=600)]) as sess:
    while not sess.should_stop():
        sess.run(train, {x: my_features, y: my_targets})
    if sess.is_chief:
        final_w, final_b, final_step = sess.run([w, b, step])
        with open(sys.argv[1], "w") as out:
            json.dump({"w": final_w.ravel().tolist(), "b": final_b.tolist(),
                       "step": int(final_step)}, out)
