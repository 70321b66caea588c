"""psflow's errors as the codes the two fronts answer with: gRPC status codes, TensorFlow's
error code names (in StatusProto) and HTTP statuses, as TensorFlow Serving maps them."""

import grpc

from psflow import errors

# Most specific first: the error classes share bases (NotFoundError is a KeyError...).
_CODES = [
    (errors.InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFoundError, grpc.StatusCode.NOT_FOUND),
    (errors.FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (errors.DataLossError, grpc.StatusCode.DATA_LOSS),
    (errors.ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (errors.OutOfRangeError, grpc.StatusCode.OUT_OF_RANGE),
    (errors.AbortedError, grpc.StatusCode.ABORTED),
]

_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def grpc_code_of(exc):
    """The gRPC status code of an exception (INTERNAL for anything not psflow's)."""
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def code_name_of(exc):
    """TensorFlow's error code name (tensorflow.error.Code) of an exception."""
    return grpc_code_of(exc).name


def http_status_of(exc):
    return _HTTP.get(grpc_code_of(exc), 500)
