"""A two-layer perceptron with shared weights in the style of TF1 model code: variables made
with get_variable inside variable scopes, one tower for training (with dropout) and one
reusing its weights for evaluation, RMSProp with gradients clipped by global norm, a
piecewise-constant learning rate, and summaries written for TensorBoard."""

import argparse
import os
import tempfile

import numpy as np

import input_data
import psflow as tf


def tower(images, keep_prob, reuse):
  with tf.variable_scope("mlp", reuse=reuse):
    with tf.variable_scope("hidden"):
      weights = tf.get_variable("weights", [784, 128],
                                initializer=tf.truncated_normal_initializer(stddev=0.05))
      biases = tf.get_variable("biases", [128], initializer=tf.zeros_initializer())
      hidden = tf.nn.relu(tf.matmul(images, weights) + biases)
      hidden = tf.nn.dropout(hidden, keep_prob=keep_prob)
    with tf.variable_scope("softmax_linear"):
      weights = tf.get_variable("weights", [128, 10],
                                initializer=tf.truncated_normal_initializer(stddev=0.05))
      biases = tf.get_variable("biases", [10], initializer=tf.zeros_initializer())
      return tf.nn.xw_plus_b(hidden, weights, biases)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--log_dir", default="")
  args = parser.parse_args()
  log_dir = args.log_dir or tempfile.mkdtemp()

  mnist = input_data.read_data_sets("/tmp/mnist", one_hot=True)
  x = tf.placeholder(tf.float32, shape=(None, 784))
  y_ = tf.placeholder(tf.float32, shape=(None, 10))

  logits = tower(x, keep_prob=0.8, reuse=False)
  eval_logits = tower(x, keep_prob=1.0, reuse=True)
  assert len(tf.trainable_variables()) == 4, "the towers share their variables"

  loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits_v2(labels=y_, logits=logits))
  global_step = tf.Variable(0, name="global_step", trainable=False)
  learning_rate = tf.train.piecewise_constant(global_step, [200, 300], [0.002, 0.001, 0.0005])
  optimizer = tf.train.RMSPropOptimizer(learning_rate)
  grads, variables = zip(*optimizer.compute_gradients(loss))
  clipped, norm = tf.clip_by_global_norm(grads, 5.0)
  train_op = optimizer.apply_gradients(zip(clipped, variables), global_step=global_step)

  correct = tf.equal(tf.argmax(eval_logits, 1), tf.argmax(y_, 1))
  accuracy = tf.reduce_mean(tf.cast(correct, tf.float32))
  tf.summary.scalar("loss", loss)
  tf.summary.scalar("gradient_norm", norm)
  tf.summary.histogram("logits", logits)
  merged = tf.summary.merge_all()

  with tf.Session() as sess:
    writer = tf.summary.FileWriter(os.path.join(log_dir, "train"), sess.graph)
    sess.run(tf.global_variables_initializer())
    for _ in range(args.steps):
      xs, ys = mnist.train.next_batch(100)
      summary, _, step = sess.run([merged, train_op, global_step], feed_dict={x: xs, y_: ys})
      if step % 50 == 0:
        writer.add_summary(summary, step)
    writer.close()
    assert tf.train.global_step(sess, global_step) == args.steps
    acc = sess.run(accuracy, feed_dict={x: mnist.test.images, y_: mnist.test.labels})
    print("test accuracy: %.4f" % acc)
    print("summaries in", os.path.join(log_dir, "train"))


if __name__ == "__main__":
  np.random.seed(1)
  main()
