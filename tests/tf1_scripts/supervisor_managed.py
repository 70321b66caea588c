"""A between-graph replicated trainer using tf.train.Supervisor's managed_session, as TF1's
distributed examples wrote it before MonitoredTrainingSession: a classic global step
variable, a summary op the chief writes to the logdir, and a loop on sv.should_stop()."""

import tempfile

import input_data
import psflow as tf

flags = tf.app.flags
flags.DEFINE_string("ps_hosts", "", "Comma-separated list of hostname:port pairs")
flags.DEFINE_string("worker_hosts", "", "Comma-separated list of hostname:port pairs")
flags.DEFINE_string("job_name", "", "One of 'ps', 'worker'")
flags.DEFINE_integer("task_index", 0, "Index of task within the job")
flags.DEFINE_integer("train_steps", 500, "Global steps to train")
flags.DEFINE_string("logdir", "", "Checkpoints and summaries (default: a fresh temp dir)")
FLAGS = flags.FLAGS


def main(_):
  cluster = tf.train.ClusterSpec({"ps": FLAGS.ps_hosts.split(","),
                                  "worker": FLAGS.worker_hosts.split(",")})
  server = tf.train.Server(cluster, job_name=FLAGS.job_name, task_index=FLAGS.task_index)
  if FLAGS.job_name == "ps":
    server.join()
    return

  mnist = input_data.read_data_sets("/tmp/mnist", one_hot=True)
  with tf.device(tf.train.replica_device_setter(
      worker_device="/job:worker/task:%d" % FLAGS.task_index, cluster=cluster)):
    x = tf.placeholder(tf.float32, [None, 784])
    y_ = tf.placeholder(tf.float32, [None, 10])
    with tf.name_scope("hidden"):
      w1 = tf.Variable(tf.random_normal([784, 64], stddev=0.05), name="weights")
      b1 = tf.Variable(tf.zeros([64]), name="biases")
      hidden = tf.nn.sigmoid(tf.matmul(x, w1) + b1)
    with tf.name_scope("softmax"):
      w2 = tf.Variable(tf.random_normal([64, 10], stddev=0.05), name="weights")
      b2 = tf.Variable(tf.zeros([10]), name="biases")
      logits = tf.matmul(hidden, w2) + b2
    global_step = tf.Variable(0, name="global_step", trainable=False)
    loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=y_, logits=logits))
    train_op = tf.train.MomentumOptimizer(0.2, 0.9).minimize(loss, global_step=global_step)
    accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1), tf.argmax(y_, 1)),
                                      tf.float32))
    tf.summary.scalar("cost", loss)
    summary_op = tf.summary.merge_all()
    init_op = tf.global_variables_initializer()

  sv = tf.train.Supervisor(is_chief=(FLAGS.task_index == 0),
                           logdir=FLAGS.logdir or tempfile.mkdtemp(),
                           global_step=global_step, init_op=init_op, summary_op=summary_op,
                           save_model_secs=600)
  with sv.managed_session(server.target) as sess:
    step = 0
    while not sv.should_stop() and step < FLAGS.train_steps:
      batch_x, batch_y = mnist.train.next_batch(100)
      _, step = sess.run([train_op, global_step], feed_dict={x: batch_x, y_: batch_y})
    if sv.is_chief:
      summary = sess.run(summary_op, feed_dict={x: batch_x, y_: batch_y})
      sv.summary_computed(sess, summary)
      print("test accuracy: %.4f" % sess.run(
          accuracy, feed_dict={x: mnist.test.images, y_: mnist.test.labels}))
  sv.stop()
  print("done at step", step)


if __name__ == "__main__":
  tf.app.run()
