"""One child process of a job: started in a session (and process group) of its own, its output
copied line by line with its role as prefix, signalled as a group, reaped exactly once."""

import os
import signal
import subprocess
import threading

# How long reaping waits for a child's output to drain once the child is gone.
PUMP_JOIN_S = 2.0


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

    def __init__(self, role, index, command, env, output):
        self.role, self.index = role, index
        self.name = f"{role} {index}"
        self.tag = f"{role}:{index}"
        self.command = list(command)
        self.process = subprocess.Popen(self.command, env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        start_new_session=True)
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
        for pump in self._pumps:
            pump.join(timeout=PUMP_JOIN_S)
