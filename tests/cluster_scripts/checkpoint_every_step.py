"""Trains a small Adam model forever, saving a checkpoint at every step to argv[1]."""

import sys

import numpy as np

import psflow as tf

x = tf.placeholder(tf.float32, shape=(None, 6), name="x")
y = tf.placeholder(tf.float32, shape=(None,), name="y")
w = tf.Variable(np.linspace(-1, 1, 24 * 2000, dtype=np.float32).reshape(6 * 2000, 4)[:6],
                name="dense/w")
b = tf.Variable(np.zeros(4, np.float32), name="dense/b")
v = tf.Variable(np.ones(4, np.float32), name="out/v")
loss = tf.reduce_mean(tf.square(tf.reduce_sum(tf.tanh(x @ w + b) * v, axis=1) - y))
step = tf.train.get_or_create_global_step()
train = tf.train.AdamOptimizer(0.05).minimize(loss, global_step=step)
rng = np.random.default_rng(0)
with tf.train.MonitoredTrainingSession(checkpoint_dir=sys.argv[1], save_checkpoint_steps=1,
                                       max_to_keep=3) as sess:
    while True:
        sess.run(train, {x: rng.normal(size=(8, 6)), y: rng.normal(size=8)})
