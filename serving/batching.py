"""Dynamic batching, as TensorFlow Serving's BatchingSession: concurrent requests to one
predictor are gathered into one batch, run with a single `predict`, and each request gets its
own rows of the outputs back.

A BatchingPredictor wraps a loaded Predictor with the same interface, so the rest of the
server is unchanged. Its queue holds open batches, one per kind of request (the same input
keys, dtypes and sizes beyond the first axis: requests of other shapes are never mixed). A
batch closes when it reaches `max_batch_size` rows or `batch_timeout_micros` after its first
request, whichever comes first; the BatchScheduler's `num_batch_threads` threads, shared by
every queue, run the closed batches. A queue holding `max_enqueued_batches` batches refuses
more requests with ResourceExhaustedError (RESOURCE_EXHAUSTED, 429); a request of more rows
than `max_batch_size` is refused with InvalidArgumentError (INVALID_ARGUMENT, 400), as TF
Serving refuses it without large batch splitting.
"""

import asyncio
import collections
import logging
import threading
import time

import numpy as np

from psflow.errors import InvalidArgumentError, ResourceExhaustedError, UnavailableError

log = logging.getLogger(__name__)


class _Task:
    """One request waiting in a batch."""

    def __init__(self, inputs, size, on_finish=None):
        self.inputs = inputs
        self.size = size
        self.done = threading.Event()
        self.outputs = None
        self.error = None
        self.on_finish = on_finish  # called in the batch thread once it is finished

    def finish(self, outputs=None, error=None):
        self.outputs, self.error = outputs, error
        self.done.set()
        if self.on_finish is not None:
            self.on_finish(self)


class _Batch:
    def __init__(self, queue, key, deadline):
        self.queue = queue
        self.key = key
        self.deadline = deadline
        self.timer = None  # a batch on the front loop: the call that closes it
        self.tasks = []
        self.size = 0


def batch_key(inputs):
    """What requests must share to be batched together, or None when a request cannot be
    batched (an input without a first axis, or inputs of different first sizes)."""
    key, sizes = [], set()
    for name in sorted(inputs):
        value = inputs[name]
        if value.ndim == 0:
            return None
        sizes.add(value.shape[0])
        key.append((name, value.dtype.str, value.shape[1:]))
    if len(sizes) != 1:
        return None
    return tuple(key)


class BatchScheduler:
    """The threads that run closed batches, for every queue of the server."""

    def __init__(self, options):
        self.options = options
        self._cond = threading.Condition()
        self._ready = collections.deque()  # closed batches, oldest first
        self._open = {}  # (queue id, batch key) -> _Batch
        self._stopping = False
        self._threads = [threading.Thread(target=self._run, name=f"batch-{k}", daemon=True)
                         for k in range(options.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, queue, key, task):
        """Puts a task in its queue's open batch of `key`, closing batches as they fill."""
        options = self.options
        with self._cond:
            if self._stopping:
                raise UnavailableError("the server is shutting down")
            batch = self._open.get((id(queue), key))
            if batch is not None and batch.size + task.size > options.max_batch_size:
                self._close_locked(batch)
                batch = None
            if batch is None:
                if queue.enqueued >= options.max_enqueued_batches:
                    raise ResourceExhaustedError(
                        f"the batching queue is full ({options.max_enqueued_batches} batches "
                        "waiting); retry later")
                batch = _Batch(queue, key, time.monotonic() + options.batch_timeout_seconds)
                self._open[(id(queue), key)] = batch
                queue.enqueued += 1
            batch.tasks.append(task)
            batch.size += task.size
            if batch.size >= options.max_batch_size:
                self._close_locked(batch)
            self._cond.notify()

    def _close_locked(self, batch):
        del self._open[(id(batch.queue), batch.key)]
        self._ready.append(batch)

    def _take_locked(self):
        """A batch to run now, or (None, seconds until the next one is due)."""
        if self._ready:
            return self._ready.popleft(), None
        if not self._open:
            return None, None
        batch = min(self._open.values(), key=lambda b: b.deadline)
        wait = batch.deadline - time.monotonic()
        if wait <= 0:
            self._close_locked(batch)
            return self._ready.popleft(), None
        return None, wait

    def _run(self):
        while True:
            with self._cond:
                while True:
                    batch, wait = self._take_locked()
                    if batch is not None:
                        batch.queue.enqueued -= 1
                        break
                    if self._stopping:
                        return
                    self._cond.wait(wait)
            batch.queue.run(batch.tasks)

    def stop(self, timeout=5.0):
        """Runs the batches still waiting, then stops the threads."""
        with self._cond:
            self._stopping = True
            for batch in list(self._open.values()):
                self._close_locked(batch)
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)


class BatchingPredictor:
    """A Predictor whose `predict` calls are batched with other threads' calls."""

    def __init__(self, predictor, scheduler):
        self.predictor = predictor
        self.scheduler = scheduler
        self.enqueued = 0  # batches of this queue open or waiting; guarded by the scheduler
        self._loop_batches = {}  # batch key -> the _Batch open on the front loop

    @property
    def signatures(self):
        return self.predictor.signatures

    @property
    def unbatched(self):
        """The predictor it batches for."""
        return self.predictor

    @property
    def signature(self):
        return self.predictor.signature

    def __getattr__(self, name):
        return getattr(self.predictor, name)

    def _batchable(self, inputs):
        """(arrays, batch key, rows) of a request; the key is None when it has nothing to
        batch with (it runs alone). InvalidArgumentError for one no batch could hold (TF
        Serving's refusal: no large batch splitting)."""
        arrays = {key: np.asarray(value) for key, value in inputs.items()}
        key = batch_key(arrays) if arrays else None
        size = next(iter(arrays.values())).shape[0] if key is not None else 0
        limit = self.scheduler.options.max_batch_size
        if size > limit:
            raise InvalidArgumentError(
                f"Task size {size} is larger than maximum input batch size {limit}")
        return arrays, (key if size else None), size

    def _task(self, inputs, on_finish=None):
        """The task of a request in the batch threads' queue, or None when it runs alone."""
        arrays, key, size = self._batchable(inputs)
        if key is None:
            return None
        task = _Task(arrays, size, on_finish)
        self.scheduler.submit(self, key, task)
        return task

    def predict(self, inputs):
        """{output key: array} for `inputs`, as the wrapped Predictor answers them."""
        task = self._task(inputs)
        if task is None:
            return self.predictor.predict(inputs)
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.outputs

    async def predict_async(self, inputs, in_loop=False):
        """`predict` for a caller on an event loop: it waits for its batch without holding a
        thread. With `in_loop` (a quick model) the batches are gathered and run in the loop
        itself, no thread involved: the requests that arrive together (within
        `batch_timeout_micros`) run as one."""
        loop = asyncio.get_running_loop()
        answer = loop.create_future()

        def settle(task):
            if not answer.done():
                if task.error is not None:
                    answer.set_exception(task.error)
                else:
                    answer.set_result(task.outputs)

        if in_loop:
            task = self._loop_task(inputs, settle, loop)
        else:
            task = self._task(inputs, lambda t: loop.call_soon_threadsafe(settle, t))
        if task is None:
            return self.predictor.predict(inputs) if in_loop else await loop.run_in_executor(
                None, self.predictor.predict, inputs)
        return await answer

    def _loop_task(self, inputs, settle, loop):
        """A task in this predictor's open batch on the loop (None: it runs alone)."""
        arrays, key, size = self._batchable(inputs)
        if key is None:
            return None
        limit = self.scheduler.options.max_batch_size
        batch = self._loop_batches.get(key)
        if batch is not None and batch.size + size > limit:
            self._run_in_loop(batch)
            batch = None
        if batch is None:
            batch = self._loop_batches[key] = _Batch(self, key, None)
            batch.timer = loop.call_later(self.scheduler.options.batch_timeout_seconds,
                                          self._run_in_loop, batch)
        task = _Task(arrays, size, settle)
        batch.tasks.append(task)
        batch.size += size
        if batch.size >= limit:
            self._run_in_loop(batch)
        return task

    def _run_in_loop(self, batch):
        if self._loop_batches.get(batch.key) is batch:
            del self._loop_batches[batch.key]
            batch.timer.cancel()
            self.run(batch.tasks)

    def run(self, tasks):
        """Runs one batch and hands every task its rows; called by a scheduler thread."""
        try:
            if len(tasks) == 1 and not self.scheduler.options.allowed_batch_sizes:
                tasks[0].finish(outputs=self.predictor.predict(tasks[0].inputs))
                return
            outputs, total = self._predict_batch(tasks)
        except Exception as exc:  # one bad request must not fail the others: run each alone
            if len(tasks) == 1:
                tasks[0].finish(error=exc)
                return
            log.debug("a batch of %d requests failed (%s); running them one by one",
                      len(tasks), exc)
            self._run_alone(tasks)
            return
        if any(np.ndim(v) == 0 or np.shape(v)[0] != total for v in outputs.values()):
            self._run_alone(tasks)  # outputs without a batch axis cannot be split
            return
        start = 0
        for task in tasks:
            end = start + task.size
            task.finish(outputs={k: v[start:end] for k, v in outputs.items()})
            start = end

    def _predict_batch(self, tasks):
        names = list(tasks[0].inputs)
        rows = sum(task.size for task in tasks)
        total = self.scheduler.options.padded_size(rows)
        inputs = {}
        for name in names:
            parts = [task.inputs[name] for task in tasks]
            if total > rows:  # pad with copies of the first row, as TF Serving does
                first = parts[0][:1]
                parts.append(np.repeat(first, total - rows, axis=0))
            inputs[name] = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
        return self.predictor.predict(inputs), total

    def _run_alone(self, tasks):
        for task in tasks:
            try:
                task.finish(outputs=self.predictor.predict(task.inputs))
            except Exception as exc:  # the request's own error, answered to it alone
                task.finish(error=exc)


def batching_load_fn(load_fn, scheduler):
    """A load_fn whose predictors batch their requests through `scheduler`."""
    def load(export_dir, signature):
        return BatchingPredictor(load_fn(export_dir, signature=signature), scheduler)
    return load
