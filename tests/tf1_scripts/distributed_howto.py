"""The trainer of TF1's "Distributed TensorFlow" how-to: a ClusterSpec from --ps_hosts and
--worker_hosts, a tf.train.Server per task, ps tasks that join(), and workers that build the
graph under replica_device_setter and train with MonitoredTrainingSession(master=
server.target) until a StopAtStepHook stops them."""

import argparse
import sys

import input_data
import psflow as tf

FLAGS = None


def main(_):
  ps_hosts = FLAGS.ps_hosts.split(",")
  worker_hosts = FLAGS.worker_hosts.split(",")

  # Create a cluster from the parameter server and worker hosts.
  cluster = tf.train.ClusterSpec({"ps": ps_hosts, "worker": worker_hosts})

  # Create and start a server for the local task.
  server = tf.train.Server(cluster, job_name=FLAGS.job_name, task_index=FLAGS.task_index)

  if FLAGS.job_name == "ps":
    server.join()
  elif FLAGS.job_name == "worker":
    mnist = input_data.read_data_sets("/tmp/mnist", one_hot=True)

    # Assigns ops to the local worker by default.
    with tf.device(tf.train.replica_device_setter(
        worker_device="/job:worker/task:%d" % FLAGS.task_index, cluster=cluster)):

      # Build model...
      x = tf.placeholder(tf.float32, [None, 784])
      y_ = tf.placeholder(tf.float32, [None, 10])
      hidden = tf.layers.dense(x, 64, activation=tf.nn.relu)
      logits = tf.layers.dense(hidden, 10)
      loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=y_, logits=logits))
      correct = tf.equal(tf.argmax(logits, 1), tf.argmax(y_, 1))
      accuracy = tf.reduce_mean(tf.cast(correct, tf.float32))
      global_step = tf.contrib.framework.get_or_create_global_step()

      train_op = tf.train.AdagradOptimizer(0.1).minimize(loss, global_step=global_step)

    # The StopAtStepHook handles stopping after running given steps.
    hooks = [tf.train.StopAtStepHook(last_step=FLAGS.train_steps)]

    # The MonitoredTrainingSession takes care of session initialization,
    # restoring from a checkpoint, saving to a checkpoint, and closing when done
    # or an error occurs.
    with tf.train.MonitoredTrainingSession(master=server.target,
                                           is_chief=(FLAGS.task_index == 0),
                                           checkpoint_dir=FLAGS.checkpoint_dir,
                                           hooks=hooks) as mon_sess:
      while not mon_sess.should_stop():
        # Run a training step asynchronously.
        batch_xs, batch_ys = mnist.train.next_batch(50)
        mon_sess.run(train_op, feed_dict={x: batch_xs, y_: batch_ys})
      if FLAGS.task_index == 0:
        print("test accuracy: %.4f" % mon_sess.run(
            accuracy, feed_dict={x: mnist.test.images, y_: mnist.test.labels}))


if __name__ == "__main__":
  parser = argparse.ArgumentParser()
  parser.register("type", "bool", lambda v: v.lower() == "true")
  # Flags for defining the tf.train.ClusterSpec
  parser.add_argument("--ps_hosts", type=str, default="",
                      help="Comma-separated list of hostname:port pairs")
  parser.add_argument("--worker_hosts", type=str, default="",
                      help="Comma-separated list of hostname:port pairs")
  parser.add_argument("--job_name", type=str, default="", help="One of 'ps', 'worker'")
  # Flags for defining the tf.train.Server
  parser.add_argument("--task_index", type=int, default=0, help="Index of task within the job")
  parser.add_argument("--train_steps", type=int, default=600)
  parser.add_argument("--checkpoint_dir", type=str, default="/tmp/train_logs")
  FLAGS, unparsed = parser.parse_known_args()
  tf.app.run(main=main, argv=[sys.argv[0]] + unparsed)
