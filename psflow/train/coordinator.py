"""TF1's thread coordination (`tf.train.Coordinator`, `QueueRunner`, `start_queue_runners`),
accepted so that scripts written for queues run: psflow has no queues (batches are fed through
feed_dict), so there are no runner threads to coordinate."""

import contextlib


class Coordinator:
    """TF1's thread coordinator, for scripts that start queue runners (psflow has none)."""

    def __init__(self, clean_stop_exception_types=None):
        self._stop = False

    def should_stop(self):
        return self._stop

    def request_stop(self, ex=None):
        self._stop = True

    def join(self, threads=None, stop_grace_period_secs=120, ignore_live_threads=False):
        for thread in threads or ():
            thread.join(stop_grace_period_secs)

    def stop_on_exception(self):
        return contextlib.nullcontext()


class QueueRunner:
    """What SyncReplicasOptimizer.get_chief_queue_runner() returns: psflow runs no queue
    threads, so it has nothing to start."""

    def __init__(self, queue=None, enqueue_ops=None, **unused):
        self.queue = queue
        self.enqueue_ops = list(enqueue_ops or [])

    def create_threads(self, sess, coord=None, daemon=False, start=False):
        return []


def start_queue_runners(sess=None, coord=None, daemon=True, start=True, collection=None):
    """Accepted: psflow has no queues (feed batches through feed_dict), so there are no runner
    threads; returns []."""
    return []
