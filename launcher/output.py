"""The launcher's terminal: children's lines with their role prefix, the launcher's own
messages, and one progress line (redrawn in place on a terminal)."""

import sys
import threading


class Output:
    def __init__(self, stdout=None, stderr=None):
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.tty = self.stderr.isatty()
        self._lock = threading.Lock()
        self._status = ""

    def pump(self, name, stream, is_err):
        """Copies a child's output stream line by line, prefixed with `[name]`."""
        for raw in iter(stream.readline, b""):
            self.line(f"[{name}] {raw.decode(errors='replace').rstrip()}", is_err)
        stream.close()

    def line(self, text, is_err=False):
        target = self.stderr if is_err else self.stdout
        with self._lock:
            if self.tty and self._status:
                self.stderr.write("\r\033[K")
                self.stderr.flush()
            target.write(text + "\n")
            target.flush()
            if self.tty and self._status:
                self.stderr.write(self._status)
                self.stderr.flush()

    def launcher(self, text):
        self.line(f"[launch] {text}", is_err=True)

    def error(self, text):
        self.line(f"launch: {text}", is_err=True)

    def status(self, text):
        """Shows the progress line: redrawn in place on a terminal, else printed."""
        if not self.tty:
            self.launcher(text)
            return
        with self._lock:
            self._status = text
            self.stderr.write("\r\033[K" + text)
            self.stderr.flush()

    def close(self):
        with self._lock:
            if self.tty and self._status:
                self.stderr.write("\r\033[K")
                self.stderr.flush()
            self._status = ""
