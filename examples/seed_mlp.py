"""Blue points inside, red points around them: a 3-hidden-layer sigmoid MLP learns the border.

The classic first graph: placeholders for the points and their one-hot colours, three sigmoid
hidden layers, softmax cross-entropy, and plain gradient descent on the whole set.

    python examples/seed_mlp.py
"""

import argparse

import numpy as np

import psflow as tf


def make_points(count_per_class=200, seed=0):
    """(points, one-hot labels): blue in a disc of radius 1, red in a ring from 1.6 to 2.6."""
    rng = np.random.default_rng(seed)

    def ring(inner, outer):
        angle = rng.uniform(0.0, 2.0 * np.pi, count_per_class)
        radius = np.sqrt(rng.uniform(inner ** 2, outer ** 2, count_per_class))
        return np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)

    points = np.concatenate([ring(0.0, 1.0), ring(1.6, 2.6)]).astype(np.float32)
    colours = np.repeat([0, 1], count_per_class)  # 0 blue, 1 red
    return points, np.eye(2, dtype=np.float32)[colours]


def mlp(points, hidden=(16, 16, 16)):
    """Logits of a sigmoid MLP on 2-D points, with two output classes."""
    h = points
    sizes = (2,) + tuple(hidden)
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        w = tf.get_variable(f"hidden{i}/w", shape=(fan_in, fan_out))
        b = tf.Variable(tf.zeros((fan_out,)), name=f"hidden{i}/b")
        h = tf.sigmoid(h @ w + b)
    w = tf.get_variable("logits/w", shape=(sizes[-1], 2))
    b = tf.Variable(tf.zeros((2,)), name="logits/b")
    return h @ w + b


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--learning-rate", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    tf.set_random_seed(args.seed)
    points_value, labels_value = make_points(seed=args.seed)

    points = tf.placeholder(tf.float32, shape=(None, 2), name="points")
    labels = tf.placeholder(tf.float32, shape=(None, 2), name="labels")
    logits = mlp(points)
    loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    correct = tf.equal(tf.argmax(logits, axis=1), tf.argmax(labels, axis=1))
    accuracy = tf.reduce_mean(tf.cast(correct, tf.float32))
    train_op = tf.train.GradientDescentOptimizer(args.learning_rate).minimize(loss)

    feed = {points: points_value, labels: labels_value}
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        for step in range(1, args.steps + 1):
            _, loss_value = sess.run([train_op, loss], feed)
            if step % 100 == 0:
                print(f"step {step:4d}: loss {loss_value:.4f}")
        print(f"training accuracy: {sess.run(accuracy, feed):.4f}")


if __name__ == "__main__":
    main()
