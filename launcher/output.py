"""The launcher's terminal: the children's lines with their role as prefix, the launcher's own
messages, and the job's progress line (redrawn in place when stderr is a terminal).

Every line is written whole under one lock, so lines of different children never mix. A
terminal or pipe that goes away never stops the copying: a child must not block on a full pipe.
"""

import os
import sys
import threading

CLEAR_LINE = "\r\033[K"


def _is_tty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


class Output:
    def __init__(self, stdout=None, stderr=None):
        self.stdout = stdout if stdout is not None else sys.stdout
        self.stderr = stderr if stderr is not None else sys.stderr
        self.tty = _is_tty(self.stderr)
        self._lock = threading.Lock()
        self._status = ""

    def pump(self, tag, stream, is_err):
        """Copies a child's output `stream` (binary) until EOF, each line as `[tag] line`.
        The bytes pass through undecoded; only the line ending is normalized."""
        prefix = f"[{tag}] ".encode()
        try:
            for raw in iter(stream.readline, b""):
                self._emit(prefix + raw.rstrip(b"\r\n") + b"\n", is_err)
        except (OSError, ValueError):
            pass  # the pipe was closed under us: the child is gone
        finally:
            stream.close()

    def launcher(self, text):
        """An informational message of the launcher: `[launch] text`, on stderr."""
        self._emit_text(f"[launch] {text}")

    def error(self, text):
        """A failure or warning the user must see: `launch: text`, on stderr."""
        self._emit_text(f"launch: {text}")

    def status(self, text):
        """Shows the progress line: redrawn in place on a terminal, else printed as a line."""
        if not self.tty:
            self.launcher(text)
            return
        text = text[:max(self._width() - 1, 20)]
        with self._lock:
            self._status = text
            self._write(self.stderr, (CLEAR_LINE + text).encode(self._encoding(self.stderr),
                                                                 errors="replace"))

    def clear_status(self):
        """Removes the progress line from the terminal."""
        with self._lock:
            if self.tty and self._status:
                self._write(self.stderr, CLEAR_LINE.encode())
            self._status = ""

    # -- internals ------------------------------------------------------------------------------
    def _emit_text(self, text):
        self._emit((text + "\n").encode(self._encoding(self.stderr), errors="replace"), True)

    def _emit(self, line, is_err):
        target = self.stderr if is_err else self.stdout
        with self._lock:
            if self.tty and self._status:
                self._write(self.stderr, CLEAR_LINE.encode())
            self._write(target, line)
            if self.tty and self._status:
                self._write(self.stderr, self._status.encode(self._encoding(self.stderr),
                                                             errors="replace"))

    @staticmethod
    def _write(stream, data):
        try:
            buffer = getattr(stream, "buffer", None)
            if buffer is not None:
                stream.flush()  # anything written as text before goes first
                buffer.write(data)
                buffer.flush()
            else:
                stream.write(data.decode(Output._encoding(stream), errors="replace"))
                stream.flush()
        except (OSError, ValueError):
            pass  # a closed terminal or pipe must not stop the supervision

    @staticmethod
    def _encoding(stream):
        return getattr(stream, "encoding", None) or "utf-8"

    def _width(self):
        try:
            columns = os.get_terminal_size(self.stderr.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
        return columns or 80  # a pseudo-terminal may report 0 columns
