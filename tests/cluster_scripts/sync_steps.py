"""A small regression trained with the mode `launch --mode` chose. Each worker runs its own
number of steps (--steps, or --steps-by-worker 5,10,15 by task index) and prints
"worker I finished N steps at global step G"; --die-at WORKER:STEP makes that worker kill
itself with SIGKILL when it reaches that step of its own (with --die-once PATH, only the
first time: PATH marks that it did). --hang-at WORKER:STEP makes it sleep for ever there
(STEP -1: before it creates its session); --leave WORKER makes it exit 0 at once, without
joining the job."""

import argparse
import os
import signal
import time

import numpy as np

import psflow as tf

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=30)
parser.add_argument("--steps-by-worker", default="")
parser.add_argument("--die-at", default="")
parser.add_argument("--die-once", default="")
parser.add_argument("--hang-at", default="")
parser.add_argument("--leave", type=int, default=-1)
args = parser.parse_args()

index = tf.train.task_config_from_env().worker_index
steps = int(args.steps_by_worker.split(",")[index]) if args.steps_by_worker else args.steps
die_worker, die_step = map(int, args.die_at.split(":")) if args.die_at else (-1, -1)
hang_worker, hang_step = map(int, args.hang_at.split(":")) if args.hang_at else (-2, -2)
if index == args.leave:
    raise SystemExit(0)
if index == hang_worker and hang_step == -1:
    time.sleep(3600)

x = tf.placeholder(tf.float32, shape=(None, 4), name="x")
y = tf.placeholder(tf.float32, shape=(None,), name="y")
w = tf.Variable(np.zeros(4, np.float32), name="w")
loss = tf.reduce_mean(tf.square(tf.reduce_sum(x * w, axis=1) - y))
step = tf.train.get_or_create_global_step()
train = tf.train.GradientDescentOptimizer(0.1).minimize(loss, global_step=step)

rng = np.random.default_rng(index)
with tf.train.MonitoredTrainingSession() as sess:
    for k in range(steps):
        if index == hang_worker and k == hang_step:
            time.sleep(3600)
        if index == die_worker and k == die_step:
            if not args.die_once or not os.path.exists(args.die_once):
                if args.die_once:
                    open(args.die_once, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
        bx = rng.normal(size=(16, 4)).astype(np.float32)
        sess.run(train, {x: bx, y: bx @ np.array([1, -2, 3, 0.5], np.float32)})
    print(f"worker {index} finished {steps} steps at global step {int(sess.run(step))}",
          flush=True)
