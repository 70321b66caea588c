"""`psflow-params`: a serving parameter server, holding a mirror of one training shard and
answering reads of it as the training shard would.

    python -m psflow.serving.params_server --follow=HOST:PORT [--port 2300] [--host 0.0.0.0]
        [--chain-master HOST:PORT --shard S]

It follows the shard's parameter stream (serving.param_follower.ShardFollower) and serves
psflow's ParameterServer service's reads on `--port`: PullRows by key (train=False only: the
tier takes no writes) and by row of a dense variable, and Pull of dense variables, so that
predict servers read it with serving.remote_params as they would read the training shard.
Every other rpc is refused (UNIMPLEMENTED). The health service reports
"psflow.ParameterServer" SERVING once the mirror holds the shard's first snapshot (a
Kubernetes readiness probe), NOT_SERVING before. Calls need the job's token when
PSFLOW_AUTH_TOKEN is set; the same token follows the training shard. A shard run as a chain
of replicas is followed at its tail, as `--chain-master` names it, and at the next tail when
that one fails.
"""

import argparse
import logging
import signal
import sys
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from psflow.errors import InvalidArgumentError, NotFoundError
from psflow.fileio import atomic_write
from psflow.proto import codec, wire
from psflow.proto import psflow_pb2 as pb
from psflow.transport import auth
from .param_follower import ShardFollower

log = logging.getLogger("psflow.serving.params_server")

SERVICE = "psflow.ParameterServer"
DEFAULT_PORT = 2300


class ParamsServicer:
    """Pull and PullRows over a ShardFollower's mirror."""

    def __init__(self, follower):
        self.follower = follower

    def Pull(self, request, context):
        request = _parse(pb.PullRequest, request, context)
        values = []
        for name in dict.fromkeys(request.names):
            values.append((name, 0, _answer(context, self.follower.dense, name)))
        return wire.pull_response(pb.PullResponse(global_step=-1), values)

    def PullRows(self, request, context):
        request = _parse(pb.PullRowsRequest, request, context)
        values = []
        for selection in request.selections:
            rows = _answer(context, codec.decode, selection.rows, f"rows of {selection.name!r}")
            value = _answer(context, self.follower.dense, selection.name)
            if rows.dtype.kind not in "iu" or (rows.size and (rows.min() < 0 or
                                                              rows.max() >= len(value))):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"rows of {selection.name!r} must be integers below "
                              f"{len(value)}")
            values.append((selection.name, 0, value[rows]))
        for selection in request.keys:
            if selection.train:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"a serving parameter server takes no writes: the lookup of "
                              f"table {selection.name!r} must have train=false")
            keys = _answer(context, codec.decode, selection.keys,
                           f"keys of table {selection.name!r}")
            rows = _answer(context, self.follower.lookup, selection.name, keys)
            values.append((selection.name, 0, rows))
        return wire.pull_response(pb.PullResponse(global_step=-1), values)


def _parse(kind, data, context):
    try:
        return kind.FromString(data)
    except Exception as exc:  # noqa: BLE001 -- any malformed request
        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      f"the request is not a {kind.__name__}: {exc}")


def _answer(context, fn, *args):
    """fn(*args), its errors as status codes."""
    try:
        return fn(*args)
    except NotFoundError as exc:
        context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
    except (InvalidArgumentError, codec.CodecError) as exc:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))


class ParamsServer:
    """A serving parameter server: `start()`, `stop()`; `port` once started."""

    def __init__(self, follow, host="0.0.0.0", port=DEFAULT_PORT, token=None, threads=16,
                 **follower_options):
        self.token = auth.token_from_env() if token is None else token
        self.follower = ShardFollower(follow, token=self.token, **follower_options)
        self.host, self.requested_port, self.threads = host, port, threads
        self.port = None
        self._server = None
        self._health = health.HealthServicer()

    def start(self):
        interceptors = [auth.TokenInterceptor(self.token)] if self.token else []
        server = grpc.server(futures.ThreadPoolExecutor(self.threads),
                             options=codec.CHANNEL_OPTIONS, interceptors=interceptors)
        servicer = ParamsServicer(self.follower)
        handlers = {name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name), request_deserializer=None,
            response_serializer=lambda reply: reply) for name in ("Pull", "PullRows")}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE,
                                                                              handlers),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        self._health.set(SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        address = f"[{self.host}]" if ":" in self.host else self.host
        credentials = auth.server_credentials()  # TLS as the training shards serve it
        address = f"{address}:{self.requested_port}"
        self.port = server.add_secure_port(address, credentials) if credentials \
            else server.add_insecure_port(address)
        if not self.port:
            raise OSError(f"cannot bind {self.host}:{self.requested_port}")
        server.start()
        self._server = server
        self.follower.start()
        threading.Thread(target=self._ready_when_synced, daemon=True).start()
        log.info("serving the parameters of %s on port %d", self.follower.address, self.port)
        return self

    def _ready_when_synced(self):
        while not self.follower.wait_synced(1.0):
            if self._server is None:
                return
        self._health.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace=1.0):
        server, self._server = self._server, None
        self.follower.stop()
        if server is not None:
            self._health.enter_graceful_shutdown()
            server.stop(grace).wait()


def build_parser():
    """psflow-params' command line."""
    parser = argparse.ArgumentParser(prog="psflow-params", description=__doc__.splitlines()[0])
    parser.add_argument("--follow", required=True, metavar="HOST:PORT",
                        help="the training parameter server (one shard) to mirror")
    parser.add_argument("--chain-master", metavar="HOST:PORT",
                        help="the shard runs as a chain of replicas: mirror the chain's tail, "
                             "as this chain master names it, and the next tail when it fails "
                             "(--follow is where to start)")
    parser.add_argument("--shard", type=int, default=0,
                        help="with --chain-master: the shard's index (default 0)")
    parser.add_argument("--host", default="0.0.0.0", help="address to serve on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port to serve on (default {DEFAULT_PORT}; 0 picks one)")
    parser.add_argument("--port-file", default="", metavar="PATH",
                        help="write the port served on to PATH (whole, once serving)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.port < 65536:
        parser.error(f"--port must be a port number from 0 to 65535, got {args.port}")
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        server = ParamsServer(args.follow, args.host, args.port,
                              chain_master=args.chain_master, shard=args.shard).start()
    except OSError as exc:
        log.error("%s", exc)
        return 1
    if args.port_file:
        atomic_write(args.port_file, f"{server.port}\n".encode())
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
