"""Fault injection at named points of a replica's work, so that tests make failures happen
where they mean them rather than by timing.
PSFLOW_FAULT="ACTION:POINT:SHARD:REPLICA[:COUNT[:AFTER]]"
(several separated by ","), read when a server starts; tests in one process `install` them.

ACTION is `kill` (the process exits at once, status 137, as under kill -9) or `stall` (the
thread waits there until the fault is released, or STALL_S seconds). POINT is one of POINTS;
SHARD and REPLICA (the place in the chain, 0 the head) pick the replica; COUNT is how many
times the fault fires (default 1), AFTER how many times the point is passed first without it
firing (default 0)."""

import logging
import os
import threading

log = logging.getLogger(__name__)

POINTS = {
    "before-forward": "a replica applied a write and has not passed it on yet (at the tail: "
                      "not acknowledged it yet)",
    "before-apply": "a replica received a forwarded write and has not applied it yet",
    "before-ack": "the rest of the chain acknowledged a write; this replica has not answered "
                  "it yet",
    "heartbeat": "a replica is about to heartbeat to the chain master (stalled: it goes "
                 "silent, as a replica cut off from the master)",
    "mid-copy": "a replica is sending a copy of its state to a joining replica: between two "
                "pieces of a table",
    "mid-checkpoint": "a replica was asked for a checkpoint (SaveShard) and has not written "
                      "it yet",
}
ACTIONS = ("kill", "stall")
STALL_S = 3600.0

_faults = []
_lock = threading.Lock()


class Fault:
    """One fault: `reached` is set when a thread stalls at it; `release()` lets it go on."""

    def __init__(self, action, point, shard, replica, count=1, after=0):
        if action not in ACTIONS:
            raise ValueError(f"fault action {action!r} is not one of {', '.join(ACTIONS)}")
        if point not in POINTS:
            raise ValueError(f"fault point {point!r} is not one of {', '.join(POINTS)}")
        self.action, self.point = action, point
        self.shard, self.replica, self.count = int(shard), int(replica), int(count)
        self.after = int(after)
        self.reached = threading.Event()
        self._released = threading.Event()

    def release(self):
        self._released.set()

    def __repr__(self):
        return f"{self.action}:{self.point}:{self.shard}:{self.replica}:{self.count}"


def parse(text):
    """[Fault] of a PSFLOW_FAULT value; ValueError naming what is wrong."""
    faults = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        parts = item.split(":")
        if len(parts) not in (4, 5, 6):
            raise ValueError(f"PSFLOW_FAULT {item!r}: expected ACTION:POINT:SHARD:REPLICA"
                             "[:COUNT[:AFTER]]")
        try:
            numbers = [int(p) for p in parts[2:]]
        except ValueError:
            raise ValueError(f"PSFLOW_FAULT {item!r}: SHARD, REPLICA, COUNT and AFTER are "
                             "numbers") from None
        faults.append(Fault(parts[0], parts[1], *numbers))
    return faults


def install(fault):
    """Arms `fault` in this process; returns it."""
    with _lock:
        _faults.append(fault)
    return fault


def install_from_env():
    """Arms the faults PSFLOW_FAULT names (none when unset)."""
    for fault in parse(os.environ.get("PSFLOW_FAULT", "")):
        install(fault)


def clear():
    """Disarms every fault, releasing the threads stalled at one."""
    with _lock:
        faults = list(_faults)
        _faults.clear()
    for fault in faults:
        fault.release()


def hit(point, shard, replica):
    """Called at `point` by replica `replica` of shard `shard`: fires an armed fault there."""
    if not _faults:
        return
    with _lock:
        fault = next((f for f in _faults if f.point == point and f.shard == shard
                      and f.replica == replica and f.count > 0), None)
        if fault is None:
            return
        if fault.after > 0:
            fault.after -= 1
            return
        fault.count -= 1
    log.warning("fault %s: %s replica %d of shard %d at %s", fault, fault.action, replica,
                shard, point)
    if fault.action == "kill":
        logging.shutdown()
        os._exit(137)
    fault.reached.set()
    fault._released.wait(STALL_S)
