"""The server's heap and Python's cycle collector.

A loaded version is tens of thousands of long-lived objects (its graph, signatures, the
modules it brought in); a full collection walks every one of them, 10-15 ms in which no
request is answered, and it comes round every few thousand requests: the REST p99 of one
client went from 0.8 to 3 ms with it. So once a version is loaded everything alive is frozen
(`gc.freeze`: the collector no longer walks it); when a version is unloaded the heap is
thawed, so that its cycles are collected by the next full collection, after which whatever
is left is frozen again.
"""

import gc
import threading

_lock = threading.Lock()
_refreeze = False


def loaded():
    """A version was loaded: freeze what is alive now."""
    global _refreeze
    with _lock:
        _refreeze = False
        gc.freeze()


def unloaded():
    """A version was unloaded: thaw, and freeze again after the next full collection."""
    global _refreeze
    with _lock:
        gc.unfreeze()
        _refreeze = True


def thaw():
    """Lets the collector see the whole heap again, with no freeze pending (a process that
    served and goes on to other work: a test suite)."""
    global _refreeze
    with _lock:
        _refreeze = False
        gc.unfreeze()


def _after_collection(phase, info):
    global _refreeze
    if phase == "stop" and info["generation"] == 2 and _refreeze:
        _refreeze = False
        gc.freeze()


gc.callbacks.append(_after_collection)
