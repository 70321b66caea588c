"""A convolutional classifier built with tf.layers, in the style of TF1's "layers" tutorial
scripts: conv2d, batch_normalization (its moving averages updated through UPDATE_OPS),
max and average pooling, dense layers, dropout with training=, an exponentially decaying
learning rate, and a tf.train.Saver that saves the model and restores it for evaluation."""

import os
import tempfile

import input_data
import psflow as tf

flags = tf.app.flags
flags.DEFINE_integer("steps", 300, "Training steps")
flags.DEFINE_integer("batch_size", 64, "Examples per batch")
flags.DEFINE_float("learning_rate", 0.002, "Initial learning rate")
flags.DEFINE_string("model_dir", "", "Where to save the model (default: a fresh temp dir)")
FLAGS = flags.FLAGS


def model(images, training):
  net = tf.reshape(images, [-1, 28, 28, 1])
  net = tf.layers.conv2d(net, filters=8, kernel_size=5, padding="same", name="conv1")
  net = tf.layers.batch_normalization(net, momentum=0.9, training=training, name="bn1")
  net = tf.nn.relu(net)
  net = tf.layers.max_pooling2d(net, pool_size=2, strides=2)
  net = tf.layers.conv2d(net, filters=16, kernel_size=3, padding="same",
                         activation=tf.nn.relu, name="conv2")
  net = tf.layers.average_pooling2d(net, pool_size=2, strides=2)
  net = tf.layers.flatten(net)
  net = tf.layers.dense(net, 128, activation=tf.nn.relu, name="fc1")
  net = tf.layers.dropout(net, rate=0.3, training=training)
  return tf.layers.dense(net, 10, name="logits")


def main(_):
  mnist = input_data.read_data_sets("/tmp/mnist", one_hot=False)
  images = tf.placeholder(tf.float32, [None, 784], name="images")
  labels = tf.placeholder(tf.int64, [None], name="labels")
  training = tf.placeholder(tf.bool, [], name="training")

  logits = model(images, training)
  loss = tf.reduce_mean(
      tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
  global_step = tf.train.get_or_create_global_step()
  learning_rate = tf.train.exponential_decay(FLAGS.learning_rate, global_step,
                                             decay_steps=100, decay_rate=0.8, staircase=True)
  update_ops = tf.get_collection(tf.GraphKeys.UPDATE_OPS)
  with tf.control_dependencies(update_ops):
    train_op = tf.train.AdamOptimizer(learning_rate).minimize(loss, global_step=global_step)
  accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1), labels), tf.float32))

  saver = tf.train.Saver(max_to_keep=2)
  model_dir = FLAGS.model_dir or tempfile.mkdtemp()
  with tf.Session() as sess:
    sess.run(tf.global_variables_initializer())
    for step in range(FLAGS.steps):
      x, y = mnist.train.next_batch(FLAGS.batch_size)
      _, loss_value = sess.run([train_op, loss], {images: x, labels: y, training: True})
      if step % 100 == 0:
        tf.logging.info("step %d: loss %.4f", step, loss_value)
    path = saver.save(sess, os.path.join(model_dir, "model.ckpt"), global_step=global_step)
    print("saved", path)

  with tf.Session() as sess:
    saver.restore(sess, tf.train.latest_checkpoint(model_dir))
    print("restored at step", sess.run(global_step))
    print("test accuracy:", sess.run(accuracy, {images: mnist.test.images,
                                                labels: mnist.test.labels, training: False}))


if __name__ == "__main__":
  tf.logging.set_verbosity(tf.logging.INFO)
  tf.app.run()
