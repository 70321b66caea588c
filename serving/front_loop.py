"""The event loop both fronts (gRPC and REST) run on, in a thread of its own.

One loop answers every connection: a small request is predicted right there, in the loop,
since with Python's one interpreter lock a request handed to another thread only costs two
thread switches and waits for the same lock; a large request (or any request when batching,
whose predict waits for its batch) goes to a pool of threads so the loop keeps answering.
"""

import asyncio
import concurrent.futures
import threading

INLINE_BYTES = 1 << 20  # a request body up to this size is answered in the loop


class FrontLoop:
    """An asyncio loop running in a daemon thread; `call` runs a coroutine in it and waits;
    `offload` runs a function in the worker pool."""

    def __init__(self, workers=16, batching=False):
        # With batching a predict waits for its batch: never in the loop, and over REST in
        # the pool (gRPC awaits it in the loop: prediction_servicer.py).
        self.batching = batching
        self.loop = asyncio.new_event_loop()
        self.pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="predict")
        self._thread = threading.Thread(target=self._run, name="serving-loop", daemon=True)
        self._thread.start()

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def in_loop(self):
        return threading.current_thread() is self._thread

    def call(self, coroutine, timeout=None):
        """The result of `coroutine`, run in the loop (from any other thread)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def soon(self, coroutine):
        """Runs `coroutine` in the loop without waiting for it."""
        if self.in_loop():
            return self.loop.create_task(coroutine)
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def runs_inline(self, size):
        """Whether a request of `size` bytes is answered in the loop itself."""
        return not self.batching and size <= INLINE_BYTES

    async def offload(self, function, *args):
        return await self.loop.run_in_executor(self.pool, function, *args)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.pool.shutdown(wait=False)
        if not self._thread.is_alive():
            self.loop.close()
