"""The bench's workloads in TensorFlow's own parameter-server runtime (TF1's API through
tf.compat.v1): ClusterSpec, a Server per task, replica_device_setter, MonitoredTrainingSession,
and SyncReplicasOptimizer for sync mode. Same model, data, batch, steps and throughput
measure as bench/cluster_model.py. TF's non-chief workers poll for the chief every 30 s, so
every worker waits until all have joined before its first step.

    python bench/peers/tf_ps.py --model mlp --mode async --workers 2 --ps 1   # runs a job
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def task(args):
    import tensorflow.compat.v1 as tf
    tf.disable_v2_behavior()
    started = common.tf_server(tf, args)
    if started is None:
        return
    cluster, config, server = started
    workers = cluster.num_tasks("worker")
    is_chief = args.index == 0
    sizes = common.MODELS[args.model]
    steps, warmup = common.STEPS[args.model]
    with tf.device(tf.train.replica_device_setter(
            worker_device=f"/job:worker/task:{args.index}", cluster=cluster)):
        x = tf.placeholder(tf.float32, (None, sizes[0]))
        labels = tf.placeholder(tf.int64, (None,))
        h = x
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            w = tf.get_variable(f"w{i}", (fan_in, fan_out),
                                initializer=tf.glorot_uniform_initializer(seed=i))
            b = tf.get_variable(f"b{i}", (fan_out,), initializer=tf.zeros_initializer())
            h = tf.matmul(h, w) + b
            if i < len(sizes) - 2:
                h = tf.nn.relu(h)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels,
                                                                             logits=h))
        step = tf.train.get_or_create_global_step()
        ready = tf.get_variable("workers_running", (), tf.int32,
                                initializer=tf.zeros_initializer(), trainable=False)
        mark_running = ready.assign_add(1)
        opt = tf.train.GradientDescentOptimizer(common.LEARNING_RATE)
        hooks = [tf.train.StopAtStepHook(last_step=steps)]
        if args.mode == "sync":
            opt = tf.train.SyncReplicasOptimizer(opt, replicas_to_aggregate=workers,
                                                 total_num_replicas=workers)
            hooks.append(opt.make_session_run_hook(is_chief))
        train = opt.minimize(loss, global_step=step)
    per_step = workers if args.mode == "sync" else 1
    features, targets = common.data(args.index, workers)
    start = None
    with tf.train.MonitoredTrainingSession(master=server.target, is_chief=is_chief,
                                           hooks=hooks, config=config,
                                           save_checkpoint_secs=None,
                                           save_summaries_steps=None,
                                           save_summaries_secs=None,
                                           log_step_count_steps=0) as sess:
        sess.run(mark_running)
        # Every worker starts training once all have joined (the non-chief ones wait up to
        # 30 s for the chief's session), so that none races through the steps alone.
        while sess.run(ready) < workers:
            time.sleep(0.05)
        last = None
        for batch_x, batch_y in common.batches(features, targets):
            if sess.should_stop():  # the stop hook may see the last step before this loop
                break
            _, global_step = sess.run([train, step], {x: batch_x, labels: batch_y})
            last = (time.perf_counter(), global_step)
            if is_chief and start is None and global_step >= warmup:
                start = last
            if global_step >= steps - per_step:
                break
    if is_chief and start is not None and last[1] > start[1]:
        print(common.throughput_line(last[1] - start[1], last[0] - start[0], per_step),
              flush=True)
    elif is_chief:
        print(f"no timed steps (warm-up {warmup}, last step {last and last[1]})", flush=True)


def job(model, mode="async", workers=2, ps=1):
    return common.run(common.tf_cluster_commands(__file__, common.python(), workers, ps,
                                                 "--model", model, "--mode", mode))


def main():
    parser = common.task_parser()
    parser.add_argument("--cluster")
    parser.add_argument("--mode", choices=["async", "sync"], default="async")
    args = parser.parse_args()
    if args.role:
        task(args)
    else:
        print(f"throughput: {job(args.model, args.mode, args.workers, args.ps):.1f} examples/s")


if __name__ == "__main__":
    main()
