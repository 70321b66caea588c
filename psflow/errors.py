"""Exceptions raised by psflow, named after their TensorFlow 1.x counterparts."""


class PsflowError(Exception):
    """Base class of every error psflow raises on purpose."""


class InvalidArgumentError(PsflowError, ValueError):
    """A value given to an op or a session was not of the expected shape, dtype or range."""


class FailedPreconditionError(PsflowError, RuntimeError):
    """The system is not in a state the operation needs (e.g. an uninitialized variable)."""


class NotFoundError(PsflowError, KeyError):
    """A named entity (a variable, a checkpoint) does not exist."""

    def __str__(self):
        # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class GraphMismatchError(PsflowError, ValueError):
    """Nodes from two different graphs were combined."""


class NoGradientError(PsflowError, LookupError):
    """A gradient was requested through an op that has none."""


class UnavailableError(PsflowError, RuntimeError):
    """A parameter server could not be reached."""


class DeadlineExceededError(PsflowError, TimeoutError):
    """A call or a wait did not complete within its time bound."""


class UnauthenticatedError(PsflowError, PermissionError):
    """A call was refused for lack of (or a wrong) job token."""


class DataLossError(PsflowError, IOError):
    """Stored data (a checkpoint or model file) is missing, truncated or altered."""


class ResourceExhaustedError(PsflowError, RuntimeError):
    """Something ran out: disk space for a checkpoint, or room in a message for a reply."""


class PermissionDeniedError(PsflowError, PermissionError):
    """The caller may not do this (say, write a checkpoint outside the server's root)."""


class OutOfRangeError(PsflowError, IndexError):
    """The input is exhausted (TF1 scripts raise and catch it to end training)."""


class AbortedError(PsflowError, RuntimeError):
    """An operation was aborted."""


OpError = PsflowError  # TF1's base class of op errors
