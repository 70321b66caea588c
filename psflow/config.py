"""TF1's session configuration objects, accepted so that scripts run: psflow has no devices to
configure, so nothing in them applies."""


class _Options:
    def __init__(self, **fields):
        for name, value in fields.items():
            setattr(self, name, value)


class GPUOptions(_Options):
    """Accepted and ignored (psflow runs on CPUs)."""


class ConfigProto(_Options):
    """Accepted and ignored: device placement, soft placement, thread counts and GPU options
    do not apply to psflow."""

    def __init__(self, **fields):
        fields.setdefault("gpu_options", GPUOptions())
        super().__init__(**fields)


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
        import contextlib
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
