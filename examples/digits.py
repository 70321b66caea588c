"""Handwritten digits (scikit-learn's bundled 8x8 images): an MLP, or a small CNN with --cnn.

Runs locally as it is, or as a distributed job under `launch`:

    python examples/digits.py
    launch --workers 2 --ps 1 examples/digits.py

Each worker trains on its own shard of the training images; the chief (worker 0) reports the
accuracy on the held-out test images at the end.
"""

import argparse

import numpy as np

import psflow as tf
from psflow.worker.data import shard


def load_data(seed=0):
    """(train images, test images, train labels, test labels); pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    images = (digits.data / 16.0).astype(np.float32)
    return train_test_split(images, digits.target.astype(np.int64), test_size=0.25,
                            random_state=seed, stratify=digits.target)


def dense(inputs, fan_in, fan_out, name, activation=None):
    w = tf.get_variable(f"{name}/w", shape=(fan_in, fan_out))
    b = tf.Variable(tf.zeros((fan_out,)), name=f"{name}/b")
    out = inputs @ w + b
    return activation(out) if activation else out


def mlp(images):
    hidden = dense(images, 64, 256, "hidden1", tf.nn.relu)
    hidden = dense(hidden, 256, 256, "hidden2", tf.nn.relu)
    return dense(hidden, 256, 10, "logits")


def cnn(images):
    x = tf.reshape(images, (-1, 8, 8, 1))
    for i, (channels_in, channels_out) in enumerate([(1, 16), (16, 32)]):
        kernel = tf.get_variable(f"conv{i}/kernel", shape=(3, 3, channels_in, channels_out))
        bias = tf.Variable(tf.zeros((channels_out,)), name=f"conv{i}/bias")
        x = tf.nn.relu(tf.nn.conv2d(x, kernel, strides=1, padding="SAME") + bias)
        x = tf.nn.max_pool(x, ksize=2, strides=2, padding="VALID")
    flat = tf.reshape(x, (-1, 2 * 2 * 32))
    hidden = dense(flat, 128, 128, "hidden", tf.nn.relu)
    return dense(hidden, 128, 10, "logits")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cnn", action="store_true", help="train the CNN instead of the MLP")
    parser.add_argument("--steps", type=int, default=1500, help="global training steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-dir", default=None,
                        help="save checkpoints and the final model (model.npz) here; a run "
                             "that finds a checkpoint there resumes from it")
    parser.add_argument("--save-steps", type=int, default=200,
                        help="global steps between checkpoints (with --checkpoint-dir)")
    args = parser.parse_args(argv)

    tf.set_random_seed(args.seed)
    train_x, test_x, train_y, test_y = load_data(args.seed)
    my_x, my_y = shard(train_x, train_y)

    images = tf.placeholder(tf.float32, shape=(None, 64), name="images")
    labels = tf.placeholder(tf.int64, shape=(None,), name="labels")
    logits = cnn(images) if args.cnn else mlp(images)
    loss = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, axis=1), labels), tf.float32))
    step = tf.train.get_or_create_global_step()
    train_op = tf.train.MomentumOptimizer(args.learning_rate, momentum=0.9).minimize(
        loss, global_step=step)

    hooks = [tf.train.StopAtStepHook(last_step=args.steps)]
    saving = {"checkpoint_dir": args.checkpoint_dir, "save_checkpoint_steps": args.save_steps} \
        if args.checkpoint_dir else {}
    with tf.train.MonitoredTrainingSession(hooks=hooks, **saving) as sess:
        rng = np.random.default_rng(args.seed)
        reported = 0
        while not sess.should_stop():
            batch = rng.integers(0, len(my_x), size=args.batch_size)
            _, loss_value, global_step = sess.run([train_op, loss, step],
                                                  {images: my_x[batch], labels: my_y[batch]})
            if sess.is_chief and global_step // 250 != reported // 250:  # every 250 steps
                reported = global_step
                print(f"step {global_step}: loss {loss_value:.4f}", flush=True)
        if sess.is_chief:
            test_accuracy = sess.run(accuracy, {images: test_x, labels: test_y})
            print(f"test accuracy: {test_accuracy:.4f}", flush=True)


if __name__ == "__main__":
    main()
