"""The job token and TLS, shared by the parameter servers and their clients.

A job may have a shared token (`PSFLOW_AUTH_TOKEN`; `launch` makes one for each local job, the
Kubernetes manifests take it from a Secret). Every call then carries it as
`authorization: Bearer <token>` metadata, and a server refuses a call without it, or with
another one, with UNAUTHENTICATED before any handler runs. The standard health service stays
open, so that probes (which send no metadata) work.

TLS is optional: with `PSFLOW_TLS_CERT` and `PSFLOW_TLS_KEY` a server serves TLS only; a
client given `PSFLOW_TLS_CA` (the CA that signed the servers' certificates) connects with TLS.
"""

import hmac
import json
import os
import tempfile

import grpc

from psflow import settings

TOKEN_ENV = settings.AUTH_TOKEN.name
TLS_CERT_ENV, TLS_KEY_ENV, TLS_CA_ENV = (settings.TLS_CERT.name, settings.TLS_KEY.name,
                                         settings.TLS_CA.name)
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
# Where `launch` keeps a local job's addresses and token: a folder JOB_FOLDER_PREFIX<launcher
# pid>-<random> in the temporary folder, holding JOB_FILE, readable by its user alone.
JOB_FOLDER_PREFIX = "psflow-launch-"
JOB_FILE = "job.json"


def token_from_env(environ=None):
    """The job's token, or None when the job has none."""
    return settings.AUTH_TOKEN.get(environ)


def local_job_token(addresses, folder=None):
    """The token of a job `launch` runs on this machine whose parameter servers or serving
    tier serve at one of `addresses` (read from its job file), or None when none does."""
    folder = folder or tempfile.gettempdir()
    wanted = set(addresses)
    try:
        names = sorted(n for n in os.listdir(folder) if n.startswith(JOB_FOLDER_PREFIX))
    except OSError:
        return None
    for name in names:
        try:
            with open(os.path.join(folder, name, JOB_FILE)) as f:
                job = json.load(f)
            held = set(job.get("ps", ())) | {a for row in job.get("params", ()) for a in row}
        except (OSError, ValueError, TypeError, AttributeError):
            continue
        if held & wanted:
            return job.get("token") or None
    return None


def call_metadata(token):
    """The metadata a call carries for `token` (empty without one)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses every call (but health checks) that lacks the job's token."""

    def __init__(self, token):
        self._expected = f"Bearer {token}".encode()

        def refuse(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "this parameter server needs the job's token (PSFLOW_AUTH_TOKEN); "
                          "the call had none or another one")

        self._refuse = grpc.unary_unary_rpc_method_handler(refuse)
        self._refuse_stream = grpc.unary_stream_rpc_method_handler(refuse)

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method or ""
        if method.startswith(OPEN_PREFIXES):
            return continuation(handler_call_details)
        given = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(given.encode(), self._expected):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is not None and handler.response_streaming:
            return self._refuse_stream
        return self._refuse


def _read(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ValueError(f"cannot read the TLS {what} {path}: {exc.strerror}") from None


def server_credentials(environ=None):
    """TLS credentials for a server from PSFLOW_TLS_CERT/KEY, or None to serve plain."""
    cert, key = settings.TLS_CERT.get(environ), settings.TLS_KEY.get(environ)
    if not cert and not key:
        return None
    if not (cert and key):
        raise ValueError(f"TLS needs both {TLS_CERT_ENV} and {TLS_KEY_ENV}")
    return grpc.ssl_server_credentials([(_read(key, "key"), _read(cert, "certificate"))])


def open_channel(address, options, environ=None):
    """A channel to `address`: TLS when PSFLOW_TLS_CA is set, plain otherwise."""
    ca = settings.TLS_CA.get(environ)
    if ca:
        credentials = grpc.ssl_channel_credentials(root_certificates=_read(ca, "CA"))
        return grpc.secure_channel(address, credentials, options=options)
    return grpc.insecure_channel(address, options=options)
