"""Every setting psflow reads from the environment, in one place: its variable, its kind, its
default and what it does. A value that does not fit is a `SettingError` (a ValueError) naming
the variable, the value and what it takes.

Settings are read when asked for (`STEP_TIMEOUT.get()`), not when this module loads, so a
process that changes its environment (a test, `launch` preparing a child's) is seen. Pass
`environ` to read another mapping than `os.environ`.

    variable                        kind                default
    PSFLOW_STEP_TIMEOUT             seconds > 0         300    a sync step's longest wait
    PSFLOW_DEAD_AFTER               seconds > 0         5      a silent worker has left
    PSFLOW_JOIN_GRACE               seconds > 0         120    an unregistered worker is awaited
    PSFLOW_INIT_TIMEOUT             seconds > 0         600    non-chiefs wait for the chief
    PSFLOW_CONNECT_TIMEOUT          seconds > 0         60     a worker waits for its shards
    PSFLOW_FAREWELL_TIMEOUT         seconds > 0         10     a worker's "done" report
    PSFLOW_RECOVERY_TIMEOUT         seconds > 0         60     a restarted shard is awaited
    PSFLOW_SUMMARY_SECS             seconds > 0         10     the chief's TensorBoard curves
    PSFLOW_METRICS_PORT             port (0 = any)      unset  /metrics of every process
    PSFLOW_METRICS_HOST             host                unset  the address /metrics binds
    PSFLOW_AUTH_TOKEN               text                unset  the job's token
    PSFLOW_TLS_CERT, _KEY, _CA      path                unset  TLS for the servers, clients
    PSFLOW_CHECKPOINT_DIR           path                unset  where the chief checkpoints
    PSFLOW_CHECKPOINT_ROOT          path                unset  where a shard may restore from
    PSFLOW_CHECKPOINT_FULL_EVERY    integer >= 0        10     one checkpoint in N is full
    PSFLOW_EXPORT_DIR               path                unset  where the chief exports versions
    PSFLOW_EXPORT_EVERY_N_CHECKPOINTS integer >= 1      unset  exports every N checkpoints
    PSFLOW_PS_PORT_FILE             path                unset  a ps task writes its port there
    PSFLOW_PARENT_PID               pid                 unset  exit when that process is gone
    PSFLOW_LANE                     flag (0 = off)      on     the same-host lane
    PSFLOW_LANE_SHARED              flag (0 = off)      on     the lane's shared memory
    PSFLOW_ALLOW_NONFINITE          flag (1 = on)       off    shards take NaN/inf gradients
    PSFLOW_ONLINE                   flag (1 = on)       off    online job: SIGTERM stops cleanly
    PSFLOW_MODE                     async|sync|ssp      async  the job's consistency mode
    PSFLOW_REPLICAS_TO_AGGREGATE    integer >= 0        0      sync: workers per step
    PSFLOW_STALENESS                integer >= 0        0      ssp: steps ahead at most
"""

import argparse
import os

from .argparsing import one_of, port, seconds, whole_number


class SettingError(ValueError):
    """An environment variable of psflow's holds a value it cannot take."""


def _text(text):
    return text


def _flag(text):
    return text != "0"


class Setting:
    """One environment variable: `get()` is its value, parsed and checked by `parse` (one of
    psflow.argparsing's argument types, so a variable and a flag take values alike), or the
    default when it is unset or empty."""

    def __init__(self, name, parse, default):
        self.name, self._parse, self.default = name, parse, default

    def get(self, environ=None):
        text = (os.environ if environ is None else environ).get(self.name, "").strip()
        if not text:
            return self.default
        try:
            return self._parse(text)
        except argparse.ArgumentTypeError as exc:  # the command lines' own checks, reused
            raise SettingError(f"{self.name} {exc}") from None

    def __repr__(self):
        return f"Setting({self.name!r}, default={self.default!r})"


STEP_TIMEOUT = Setting("PSFLOW_STEP_TIMEOUT", seconds, 300.0)
DEAD_AFTER = Setting("PSFLOW_DEAD_AFTER", seconds, 5.0)
JOIN_GRACE = Setting("PSFLOW_JOIN_GRACE", seconds, 120.0)
INIT_TIMEOUT = Setting("PSFLOW_INIT_TIMEOUT", seconds, 600.0)
CONNECT_TIMEOUT = Setting("PSFLOW_CONNECT_TIMEOUT", seconds, 60.0)
FAREWELL_TIMEOUT = Setting("PSFLOW_FAREWELL_TIMEOUT", seconds, 10.0)
RECOVERY_TIMEOUT = Setting("PSFLOW_RECOVERY_TIMEOUT", seconds, 60.0)
SUMMARY_SECS = Setting("PSFLOW_SUMMARY_SECS", seconds, 10.0)
METRICS_PORT = Setting("PSFLOW_METRICS_PORT", port, None)
METRICS_HOST = Setting("PSFLOW_METRICS_HOST", _text, None)
AUTH_TOKEN = Setting("PSFLOW_AUTH_TOKEN", _text, None)
TLS_CERT = Setting("PSFLOW_TLS_CERT", _text, None)
TLS_KEY = Setting("PSFLOW_TLS_KEY", _text, None)
TLS_CA = Setting("PSFLOW_TLS_CA", _text, None)
CHECKPOINT_DIR = Setting("PSFLOW_CHECKPOINT_DIR", _text, None)
CHECKPOINT_ROOT = Setting("PSFLOW_CHECKPOINT_ROOT", _text, None)
CHECKPOINT_FULL_EVERY = Setting("PSFLOW_CHECKPOINT_FULL_EVERY", whole_number(0), 10)
EXPORT_DIR = Setting("PSFLOW_EXPORT_DIR", _text, None)
EXPORT_EVERY_N_CHECKPOINTS = Setting("PSFLOW_EXPORT_EVERY_N_CHECKPOINTS", whole_number(1), None)
PS_PORT_FILE = Setting("PSFLOW_PS_PORT_FILE", _text, None)
PARENT_PID = Setting("PSFLOW_PARENT_PID", whole_number(1), None)
LANE = Setting("PSFLOW_LANE", _flag, True)
LANE_SHARED = Setting("PSFLOW_LANE_SHARED", _flag, True)
ALLOW_NONFINITE = Setting("PSFLOW_ALLOW_NONFINITE", _flag, False)
ONLINE = Setting("PSFLOW_ONLINE", _flag, False)
MODE = Setting("PSFLOW_MODE", one_of(("async", "sync", "ssp")), "async")
REPLICAS_TO_AGGREGATE = Setting("PSFLOW_REPLICAS_TO_AGGREGATE", whole_number(0), 0)
STALENESS = Setting("PSFLOW_STALENESS", whole_number(0), 0)

ALL = tuple(value for value in list(globals().values()) if isinstance(value, Setting))


def check(environ=None):
    """Reads every setting once: the first bad one raises its SettingError. Entry points call
    this at start, so a typo in a variable stops a process before it does anything."""
    for setting in ALL:
        setting.get(environ)
