"""A CTR model (a dynamic embedding table and a dense tower) trained on a cluster; the chief
exports numbered servables under OUT/export from its checkpoints in OUT/ckpt, and one more
with simple_save to OUT/simple from the live session. Usage: export_ctr.py OUT"""

import os
import sys

import numpy as np

import psflow as tf

out = sys.argv[1]
rng = np.random.default_rng()  # each worker its own stream


def model():
    table = tf.get_embedding_variable("features", embedding_dim=4,
                                      initializer=tf.random_normal_initializer(0.0, 0.5))
    ids = tf.placeholder(tf.int64, (None, 3), name="ids")
    label = tf.placeholder(tf.float32, (None,), name="label")
    pooled = tf.reduce_sum(tf.nn.embedding_lookup(table, ids), axis=1)
    w = tf.get_variable("tower/w", shape=(4, 1))
    b = tf.Variable(np.zeros(1, np.float32), name="tower/b")
    logit = tf.squeeze(pooled @ w + b, axis=1)
    loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=label, logits=logit))
    return ids, label, tf.sigmoid(logit, name="ctr"), loss


if __name__ == "__main__":
    ids, label, ctr, loss = model()
    step = tf.train.get_or_create_global_step()
    train = tf.train.AdagradOptimizer(0.1).minimize(loss, global_step=step)
    with tf.train.MonitoredTrainingSession(
            checkpoint_dir=os.path.join(out, "ckpt"), save_checkpoint_steps=20,
            export_dir=os.path.join(out, "export"), export_every_n_checkpoints=2,
            export_signature=({"ids": ids}, {"ctr": ctr}),
            hooks=[tf.train.StopAtStepHook(last_step=60)]) as sess:
        while not sess.should_stop():
            batch = rng.integers(0, 50, (16, 3))
            sess.run(train, {ids: batch, label: (batch.sum(axis=1) % 2).astype(np.float32)})
        if sess.is_chief:
            tf.saved_model.simple_save(sess, os.path.join(out, "simple"), {"ids": ids},
                                       {"ctr": ctr})
