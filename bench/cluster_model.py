"""The training job bench/cluster.py times: an MLP on 64 input features, batch 64, SGD.

The chief measures the job's throughput from the global step after a warm-up:
examples/s = (global steps between two readings) * batch * gradients per global step /
(seconds between them). A global step takes one worker's gradients in async and ssp modes,
and the gradients of `replicas_to_aggregate` workers (all, by default) in sync mode.
"""

import argparse
import os
import time

import numpy as np

import psflow as tf
from psflow.worker.data import shard

MODELS = {"mlp": (64, 256, 256, 10), "wide": (64, 2048, 2048, 10)}


def build(sizes, learning_rate):
    x = tf.placeholder(tf.float32, shape=(None, sizes[0]), name="x")
    labels = tf.placeholder(tf.int64, shape=(None,), name="labels")
    h = x
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        w = tf.get_variable(f"w{i}", shape=(fan_in, fan_out),
                            initializer=tf.glorot_uniform_initializer(seed=i))
        b = tf.Variable(tf.zeros((fan_out,)), name=f"b{i}")
        h = h @ w + b
        if i < len(sizes) - 2:
            h = tf.nn.relu(h)
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=h))
    step = tf.train.get_or_create_global_step()
    train = tf.train.GradientDescentOptimizer(learning_rate).minimize(loss, global_step=step)
    return x, labels, loss, step, train


def gradients_per_step(num_workers):
    """How many workers' batches one global step stands for, in the mode launch chose."""
    mode = os.environ.get("PSFLOW_MODE", "async")
    if mode == "sync" or (mode == "ssp" and os.environ.get("PSFLOW_STALENESS", "0") == "0"):
        return int(os.environ.get("PSFLOW_REPLICAS_TO_AGGREGATE", "0") or 0) or num_workers
    return 1


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=sorted(MODELS), default="mlp")
    parser.add_argument("--steps", type=int, default=3000, help="global steps to run")
    parser.add_argument("--warmup", type=int, default=200, help="global steps not timed")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    features = rng.random((4096, 64), dtype=np.float32)
    targets = rng.integers(0, 10, size=4096)
    features, targets = shard(features, targets)
    x, labels, loss, step, train = build(MODELS[args.model], 0.01)

    hooks = [tf.train.StopAtStepHook(last_step=args.steps)]
    start = None
    batch = args.batch_size
    with tf.train.MonitoredTrainingSession(hooks=hooks) as sess:
        store = sess.session.store  # the distributed store, to count its traffic
        i = 0
        while not sess.should_stop():
            lo = (i * batch) % (len(features) - batch)
            _, global_step = sess.run([train, step], {x: features[lo:lo + batch],
                                                      labels: targets[lo:lo + batch]})
            i += 1
            if start is None and global_step >= args.warmup:
                start = (time.perf_counter(), global_step, i, sum(store.traffic()))
        end = (time.perf_counter(), int(sess.run(step)), i, sum(store.traffic()))
    if sess.is_chief and start is not None:
        steps = end[1] - start[1]
        seconds = end[0] - start[0]
        examples = steps * batch * gradients_per_step(tf.train.task_config_from_env().num_workers)
        # The chief's own training runs: the bytes one worker's step sends and receives.
        wire = (end[3] - start[3]) / max(end[2] - start[2], 1)
        print(f"throughput: {examples / seconds:.1f} examples/s "
              f"({steps} steps in {seconds:.2f} s; {wire:.0f} bytes per step)", flush=True)


if __name__ == "__main__":
    main()
