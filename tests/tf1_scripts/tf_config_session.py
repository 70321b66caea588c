"""A worker in the style of the Kubernetes examples of TF1 (Kubeflow's TFJob and friends): it
reads the cluster and its own task from the TF_CONFIG environment variable, starts a
tf.train.Server, and trains with a plain tf.Session(server.target); the chief runs the
initializer, and every worker loops until the shared global step reaches the target."""

import json
import os

import input_data
import psflow as tf

TRAIN_STEPS = 500


def main():
  tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
  cluster_spec = tf_config.get("cluster", {})
  task = tf_config.get("task", {})
  job_name, task_index = task.get("type"), task.get("index", 0)

  cluster = tf.train.ClusterSpec(cluster_spec)
  server = tf.train.Server(cluster, job_name=job_name, task_index=task_index)
  if job_name == "ps":
    server.join()
    return
  is_chief = job_name == "worker" and task_index == 0

  mnist = input_data.read_data_sets("/tmp/mnist", one_hot=True)
  with tf.device(tf.train.replica_device_setter(
      worker_device="/job:worker/task:%d" % task_index, cluster=cluster)):
    images = tf.placeholder(tf.float32, [None, 784])
    labels = tf.placeholder(tf.float32, [None, 10])
    weights = tf.get_variable("weights", [784, 10], initializer=tf.zeros_initializer())
    bias = tf.get_variable("bias", [10], initializer=tf.zeros_initializer())
    logits = tf.matmul(images, weights) + bias
    loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=labels,
                                                                  logits=logits))
    global_step = tf.train.get_or_create_global_step()
    train_op = tf.train.GradientDescentOptimizer(0.5).minimize(loss, global_step=global_step)
    accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1), tf.argmax(labels, 1)),
                                      tf.float32))
    init_op = tf.global_variables_initializer()

  sess = tf.Session(server.target)
  if is_chief:
    sess.run(init_op)
  step = 0
  while step < TRAIN_STEPS:
    batch = mnist.train.next_batch(100)
    _, step = sess.run([train_op, global_step], {images: batch[0], labels: batch[1]})
  print("worker %d stopped at global step %d" % (task_index, step))
  if is_chief:
    print("test accuracy: %.4f" % sess.run(accuracy, {images: mnist.test.images,
                                                      labels: mnist.test.labels}))


if __name__ == "__main__":
  main()
