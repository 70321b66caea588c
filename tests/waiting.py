"""Waiting in tests for a condition rather than for a fixed time."""

import time


def wait_for(condition, timeout, what, interval=0.02):
    """Returns once condition() is true; fails naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        time.sleep(interval)
