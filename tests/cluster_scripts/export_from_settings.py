"""Linear regression whose MonitoredTrainingSession names what to export (export_signature)
but not where: `launch --export-dir` says where. Checkpoints go to OUT/ckpt every 10 of its
120 global steps; the chief writes the final weights to OUT/weights.npz.
Usage: export_from_settings.py OUT"""

import os
import sys
import time

import numpy as np

import psflow as tf

out = sys.argv[1]
rng = np.random.default_rng(0)
features = rng.normal(size=(64, 3))
targets = features @ np.array([[2.0], [-3.0], [0.5]]) + 4.0

x = tf.placeholder(tf.float64, shape=(None, 3), name="x")
y = tf.placeholder(tf.float64, shape=(None, 1), name="y")
w = tf.Variable(np.zeros((3, 1)), name="w")
b = tf.Variable(np.zeros(1), name="b")
prediction = x @ w + b
loss = tf.reduce_mean(tf.square(prediction - y))
step = tf.train.get_or_create_global_step()
train = tf.train.GradientDescentOptimizer(0.05).minimize(loss, global_step=step)

with tf.train.MonitoredTrainingSession(
        checkpoint_dir=os.path.join(out, "ckpt"), save_checkpoint_steps=10,
        export_signature=({"x": x}, {"y": prediction}),
        hooks=[tf.train.StopAtStepHook(last_step=120)]) as sess:
    while not sess.should_stop():
        sess.run(train, {x: features, y: targets})
    if sess.is_chief:
        # the other worker's last push may still be on its way: read once the step holds
        seen = None
        while seen != sess.run(step):
            seen = sess.run(step)
            time.sleep(0.3)
        final_w, final_b = sess.run([w, b])
        np.savez(os.path.join(out, "weights.npz"), w=final_w, b=final_b)
