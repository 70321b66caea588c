"""What training must give, computed in one process, for the tests to compare a cluster's
results against."""

import numpy as np

import psflow as tf


def train_sync_oracle(train, placeholders, data, num_workers, steps, fetches, feed=None):
    """What synchronous training of `num_workers` workers for `steps` global steps must give.

    At global step t worker i trains on the batch `data(t, i)` (a tuple, one array per
    placeholder). A sync step averages the workers' gradients and applies the update rule
    once; with a loss that is a mean over the batch, and batches of one size, that is one
    process training on the concatenation of every worker's batch at each step, which is
    what this runs, in the default graph, from freshly initialized variables. Returns
    `sess.run(fetches, feed)` after the last step.
    """
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        for t in range(steps):
            batches = [data(t, i) for i in range(num_workers)]
            parts = zip(*batches, strict=True)  # per placeholder, the workers' arrays
            sess.run(train, {p: np.concatenate(arrays)
                             for p, arrays in zip(placeholders, parts, strict=True)})
        return sess.run(fetches, feed)


def assert_every_worker_matches(results, expected):
    """Each worker's fetched values (`results`: worker -> list of arrays) equal `expected`,
    array by array, to float32 rounding."""
    for values in results.values():
        for got, want in zip(values, expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
