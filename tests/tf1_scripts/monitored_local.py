"""Training with tf.train.MonitoredTrainingSession on one machine, as TF1 model scripts do:
hooks stop at a step, the session saves checkpoints and summaries to checkpoint_dir, and a
second session resumes from them. The model splits each image into its top and bottom halves
(tf.split, tf.slice), gives each its own ELU / leaky-ReLU layer, and trains with Adadelta."""

import argparse
import tempfile

import input_data
import psflow as tf


def half_layer(inputs, units, activation, name):
  with tf.variable_scope(name):
    w = tf.get_variable("w", [inputs.get_shape().as_list()[1], units],
                        initializer=tf.glorot_uniform_initializer())
    b = tf.get_variable("b", [units], initializer=tf.constant_initializer(0.01))
    return activation(tf.nn.xw_plus_b(inputs, w, b))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--checkpoint_dir", default="")
  args = parser.parse_args()
  checkpoint_dir = args.checkpoint_dir or tempfile.mkdtemp()

  mnist = input_data.read_data_sets("/tmp/mnist", one_hot=True)
  x = tf.placeholder(tf.float32, [None, 784], name="x")
  y = tf.placeholder(tf.float32, [None, 10], name="y")
  top, bottom = tf.split(x, 2, axis=1)
  middle = tf.slice(x, [0, 196], [-1, 392])
  hidden = tf.concat([half_layer(top, 48, tf.nn.elu, "top"),
                      half_layer(bottom, 48, tf.nn.leaky_relu, "bottom"),
                      half_layer(middle, 32, tf.nn.relu, "middle")], axis=1)
  logits = half_layer(hidden, 10, tf.identity, "out")
  probabilities = tf.clip_by_value(tf.nn.softmax(logits), 1e-7, 1.0)
  loss = tf.reduce_mean(-tf.reduce_sum(y * tf.log(probabilities), axis=1))
  tf.summary.scalar("loss", loss)
  accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1), tf.argmax(y, 1)),
                                    tf.float32))
  global_step = tf.train.get_or_create_global_step()
  train_op = tf.train.AdadeltaOptimizer(learning_rate=1.0).minimize(loss,
                                                                     global_step=global_step)

  first_stop = args.steps // 2
  with tf.train.MonitoredTrainingSession(
      checkpoint_dir=checkpoint_dir, save_summaries_steps=50,
      hooks=[tf.train.StopAtStepHook(last_step=first_stop)]) as sess:
    while not sess.should_stop():
      xs, ys = mnist.train.next_batch(64)
      sess.run(train_op, feed_dict={x: xs, y: ys})
  print("stopped at step", first_stop, "checkpoint", tf.train.latest_checkpoint(checkpoint_dir))

  # A second session resumes from the checkpoint and trains to the end.
  with tf.train.MonitoredTrainingSession(
      checkpoint_dir=checkpoint_dir, save_summaries_steps=50,
      hooks=[tf.train.StopAtStepHook(last_step=args.steps)]) as sess:
    print("resumed at step", sess.run(global_step))
    while not sess.should_stop():
      xs, ys = mnist.train.next_batch(64)
      sess.run(train_op, feed_dict={x: xs, y: ys})
    print("test accuracy: %.4f" % sess.run(accuracy, feed_dict={x: mnist.test.images,
                                                                 y: mnist.test.labels}))
  print("summaries in", checkpoint_dir)


if __name__ == "__main__":
  main()
