"""Online training on a followed directory whose lines are ids: each step subtracts 1 from row
`id` of `counts` for every id of its batch, so once every line was trained on exactly once,
`counts` is -1 at each id the files hold and 0 elsewhere. Checkpoints every 3 steps to
--checkpoint-dir. With --kill-once FILE, worker 1 kills itself (SIGKILL) after its third step
the first time (when FILE does not exist yet, which it then creates)."""

import argparse
import os
import signal
import time

import numpy as np

import psflow as tf
from psflow.train.cluster import task_config_from_env

parser = argparse.ArgumentParser()
parser.add_argument("--data", required=True)
parser.add_argument("--checkpoint-dir", required=True)
parser.add_argument("--rows", type=int, default=1000)
parser.add_argument("--step-sleep", type=float, default=0.0)
parser.add_argument("--idle-timeout", type=float, default=None)
parser.add_argument("--kill-once", default=None)
args = parser.parse_args()

lines = tf.data.experimental.follow_files(args.data, "*.csv", poll_interval=0.05,
                                          idle_timeout=args.idle_timeout)
ids = lines.map(lambda line: tf.decode_csv(line, [[0]])[0]).batch(2).prefetch(1)
batch = ids.make_one_shot_iterator().get_next()
counts = tf.Variable(np.zeros(args.rows, np.float32), name="counts")
loss = tf.reduce_sum(tf.gather(counts, batch))
step = tf.train.get_or_create_global_step()
train = tf.train.GradientDescentOptimizer(1.0).minimize(loss, global_step=step)

index = task_config_from_env().worker_index
steps = 0
with tf.train.MonitoredTrainingSession(checkpoint_dir=args.checkpoint_dir,
                                       save_checkpoint_steps=3) as sess:
    while not sess.should_stop():
        sess.run(train)
        steps += 1
        if args.kill_once and index == 1 and steps == 3 and not os.path.exists(args.kill_once):
            open(args.kill_once, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(args.step_sleep)
print(f"trained {steps} steps", flush=True)
