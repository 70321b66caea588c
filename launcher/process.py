"""One child process of a job: started in a session (and process group) of its own, its output
copied line by line with its role as prefix, signalled as a group, reaped exactly once; and
the watchdog that takes every child's group down if the launcher dies without doing so."""

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading

# How long reaping waits for a child's output to drain once the child is gone.
PUMP_JOIN_S = 2.0
WATCHDOG_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "watchdog.py")
_PR_SET_PDEATHSIG = 1


def _prctl():
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl
    except (OSError, AttributeError, TypeError):
        return None  # not Linux: the watchdog alone takes the children down
    prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                      ctypes.c_ulong)
    return prctl


_PRCTL = _prctl()  # looked up before any fork: the child only calls it


def _die_with_parent():
    """Runs in the child between fork and exec: the kernel sends it SIGKILL the instant the
    launcher dies, whatever the script then does."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Watchdog:
    """A process of its own (launcher/watchdog.py) told about every child's process group and
    the job's folders; if the launcher dies without tearing the job down, it kills those
    groups and removes the folders. `close()` after the teardown dismisses it."""

    def __init__(self):
        self.process = subprocess.Popen([sys.executable, "-I", WATCHDOG_SCRIPT],
                                        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        self._lock = threading.Lock()

    def say(self, line):
        with self._lock:
            try:
                self.process.stdin.write(f"{line}\n".encode())
                self.process.stdin.flush()
            except (BrokenPipeError, ValueError):  # gone or dismissed: nothing to guard
                pass

    def close(self):
        self.say("exit")
        with self._lock:
            try:
                self.process.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def describe_exit(code):
    """`code` as Popen reports it (negative: killed by that signal), in words."""
    if code is None:
        return "is still running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    if code == 0:
        return "exited with code 0"
    return f"failed with exit code {code}"


class Child:
    """A process of the job, e.g. role "worker", index 1.

    `name` ("worker 1") is how the launcher's messages refer to it; `tag` ("worker:1") prefixes
    its output lines. The child leads a new session, so a signal sent to its process group
    reaches whatever it started and a Ctrl-C in the terminal reaches only the launcher.

    The child is not reaped until `reap()`: while it is a zombie its pid, which is also its
    group's id, cannot be reused, so signalling the group can never hit an unrelated process.
    """

    def __init__(self, role, index, command, env, output, watchdog=None):
        self.role, self.index = role, index
        self.name = f"{role} {index}"
        self.tag = f"{role}:{index}"
        self.command = list(command)
        self.watchdog = watchdog
        self.process = subprocess.Popen(self.command, env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        start_new_session=True, preexec_fn=_die_with_parent)
        if watchdog is not None:
            watchdog.say(f"group {self.pid}")
        self._code = None
        self._reaped = False
        self._pumps = [threading.Thread(target=output.pump, args=(self.tag, stream, is_err),
                                        name=f"output-{self.tag}-{'err' if is_err else 'out'}",
                                        daemon=True)
                       for stream, is_err in ((self.process.stdout, False),
                                              (self.process.stderr, True))]
        for pump in self._pumps:
            pump.start()

    @property
    def pid(self):
        return self.process.pid

    def exit_code(self):
        """None while the child runs; then its exit code (negative: the signal that killed it).
        Looks without reaping (see the class docstring)."""
        if self._code is None:
            if self.process.returncode is not None:
                self._code = self.process.returncode
                return self._code
            try:
                info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:  # reaped behind our back; Popen still knows the status
                self._code = self.process.wait()
                return self._code
            if info is None or info.si_pid == 0:
                return None
            self._code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
        return self._code

    @property
    def running(self):
        return self.exit_code() is None

    def signal_group(self, signum):
        """Sends `signum` to the child's process group (the child and what it started)."""
        if self._reaped:
            return
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def reap(self):
        """Kills whatever is left in the child's group, reaps the child and drains its output.
        Call once the child has exited (or has been sent SIGKILL)."""
        if self._reaped:
            return
        self.signal_group(signal.SIGKILL)
        self._code = self.process.wait()
        self._reaped = True
        if self.watchdog is not None:  # its group id may be reused from now on
            self.watchdog.say(f"forget {self.pid}")
        for pump in self._pumps:
            pump.join(timeout=PUMP_JOIN_S)
