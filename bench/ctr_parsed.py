"""examples/ctr.py's CTR job on click logs parsed before the clock: the same model, loss,
optimizer and test metrics (examples/ctr.py's `build`, on placeholders per field instead of
its TextLineDataset + decode_csv pipeline), fed by feed_dict with the batches
bench/peers/tf_ctr.py --input parsed feeds TensorFlow: each worker parses its shard (every
num_workers-th line of the first 90% of the file) before training starts, and batch k holds
its rows k*512.., wrapping around.

The chief prints `throughput: X examples/s (N global steps in S s)` as examples/ctr.py does
(global steps x batch / seconds, after a warm-up of a tenth of the steps) and then
`test auc: A  logloss: L` over the held-out last tenth, fed in batches of 4096.

    launch --workers 2 --ps 2 bench/ctr_parsed.py --data clicks.tsv --steps 800 --table buckets
"""

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import psflow as tf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench" / "peers"))
import tf_ctr  # noqa: E402


def load_example():
    """examples/ctr.py as a module (bench/ctr.py would shadow it as `ctr`)."""
    spec = importlib.util.spec_from_file_location("ctr_example", ROOT / "examples" / "ctr.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Fed:
    """Stands in for a dataset in examples/ctr.py's `build`: its iterator's get_next() gives
    a placeholder per field and one for the labels, which the caller feeds."""

    def __init__(self, name):
        self.features = {key: tf.placeholder(tf.float32, (None,), f"{name}/{key}")
                         for key in tf_ctr.INTEGERS}
        self.features.update({key: tf.placeholder(tf.string, (None,), f"{name}/{key}")
                              for key in tf_ctr.CATEGORICALS})
        self.labels = tf.placeholder(tf.float32, (None,), f"{name}/label")

    def make_one_shot_iterator(self):
        return self

    make_initializable_iterator = make_one_shot_iterator

    def get_next(self):
        return self.features, self.labels

    def feeds(self, labels, columns):
        return {self.labels: labels, **{self.features[key]: v for key, v in columns.items()}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="click log in the Criteo TSV format")
    parser.add_argument("--steps", type=int, default=800, help="global training steps")
    parser.add_argument("--table", choices=("dynamic", "buckets"), default="dynamic")
    own = parser.parse_args(argv)
    example = load_example()
    args = example.parse_args(["--data", own.data, "--steps", str(own.steps),
                               "--table", own.table])
    task = tf.train.task_config_from_env()
    workers, index = (task.num_workers, task.worker_index) if task else (1, 0)
    lines = tf_ctr.count_lines(args.data)
    keep = tf_ctr.train_rows(lines)
    shard = tf_ctr.parse_lines(tf_ctr.read_shard(args.data, keep, workers, index))
    fed = tf_ctr.batches(*shard, args.batch_size)
    train, test = Fed("train"), Fed("test")
    model = example.build(args, train, test)
    start = None
    with tf.train.MonitoredTrainingSession(
            hooks=[tf.train.StopAtStepHook(last_step=args.steps)]) as sess:
        while not sess.should_stop():
            _, global_step = sess.run([model["train"], model["step"]], train.feeds(*next(fed)))
            if start is None and global_step >= args.warmup:
                start = (time.perf_counter(), global_step)
        end = (time.perf_counter(), int(sess.run(model["step"])))
        if not sess.is_chief:
            return
        if start is not None and end[1] > start[1]:
            steps, seconds = end[1] - start[1], end[0] - start[0]
            print(f"throughput: {steps * args.batch_size / seconds:.1f} examples/s "
                  f"({steps} global steps in {seconds:.2f} s)", flush=True)
        labels, columns = tf_ctr.parse_lines(tf_ctr.read_lines(args.data, keep, lines))
        for lo in range(0, len(labels), args.eval_batch_size):
            hi = lo + args.eval_batch_size
            sess.run(model["evaluate"],
                     test.feeds(labels[lo:hi], {k: v[lo:hi] for k, v in columns.items()}))
        auc, logloss = sess.run([model["auc"], model["logloss"]])
        print(f"test auc: {auc:.4f}  logloss: {logloss:.4f}  ({len(labels)} held-out rows)",
              flush=True)


if __name__ == "__main__":
    main()
