"""Every worker trains the rows of keys 1..20 of an embedding table "items" (dim 4) until the
file named in argv[1] exists."""

import os
import sys
import time

import numpy as np

import psflow as tf

table = tf.get_embedding_variable("items", embedding_dim=4,
                                  initializer=tf.random_normal_initializer(0.0, 0.1))
ids = tf.placeholder(tf.int64, (None,), name="ids")
loss = tf.reduce_sum(tf.nn.embedding_lookup(table, ids))
step = tf.train.get_or_create_global_step()
train = tf.train.GradientDescentOptimizer(0.01).minimize(loss, global_step=step)

with tf.train.MonitoredTrainingSession() as sess:
    while not os.path.exists(sys.argv[1]):
        sess.run(train, {ids: np.arange(1, 21)})
        time.sleep(0.01)
