"""`python -m psflow.ps`: serve one parameter-server shard until the job is over.

    python -m psflow.ps --task-index I --num-workers N [--host 127.0.0.1] [--port 0]
        [--port-fallback] [--port-file PATH] [--insecure] [--checkpoint-root DIR]
        [--allow-nonfinite] [--metrics-port PORT] [--metrics-host HOST] [--parent-pid PID]
        [--publish-period 0.2] [--dense-period 5] [--follower-buffer-bytes N]
        [--online] [--chain-master HOST:PORT [--join] [--advertise-address HOST:PORT]]
        [--log-level INFO]

Exits 0 when the shard's lifecycle ends normally (every worker done unless --online,
SIGTERM/SIGINT, the parent process gone), 1 if it cannot serve (port taken, port file not
writable, a --join that failed), 2 on bad arguments (including a non-loopback address
without a job token and without --insecure, and a malformed PSFLOW_FAULT: see
psflow.ps.faults).
"""

import logging
import os
import signal
import sys
import threading
import time

from psflow import monitoring, settings
from psflow.argparsing import OneLineParser, one_of, port, seconds, whole_number
from psflow.fileio import atomic_write, default_checkpoint_roots
from psflow.train.cluster import task_config_from_env
from psflow.transport import memory
from . import faults
from .join import Joiner, JoinFailed
from .lease import HEARTBEAT_S
from .shard_server import ParameterServer

log = logging.getLogger("psflow.ps")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def parse_args(argv):
    parser = OneLineParser(prog="python -m psflow.ps",
                     description="Serve one parameter-server shard of a psflow job.")
    shard = parser.add_argument_group("shard")
    shard.add_argument("--task-index", type=whole_number(0),
                       help="this shard's index; shard 0 holds the global step (default: "
                            "from TF_CONFIG, as on Kubernetes)")
    shard.add_argument("--num-workers", type=whole_number(1),
                       help="workers in the job; the server exits when all have finished "
                            "(default: from TF_CONFIG)")
    network = parser.add_argument_group("network")
    network.add_argument("--host", default="127.0.0.1",
                         help="address to bind (default: loopback)")
    network.add_argument("--port", type=port, default=0,
                         help="port to bind; 0 (the default) picks a free one")
    network.add_argument("--port-fallback", action="store_true",
                         help="bind any free port when --port is taken")
    network.add_argument("--port-file",
                         help="write the bound port to this file (atomically) once serving")
    network.add_argument("--insecure", action="store_true",
                         help="serve a non-loopback address without a job token "
                              "(PSFLOW_AUTH_TOKEN); refused otherwise")
    network.add_argument("--chain-master", metavar="HOST:PORT",
                         help="the chain master to heartbeat to, as one replica of the shard's "
                              "chain (writes are refused whenever its lease ran out)")
    network.add_argument("--heartbeat-interval", type=seconds, default=HEARTBEAT_S,
                         metavar="SECONDS", help="how often to heartbeat to the chain master")
    network.add_argument("--join", action="store_true",
                         help="with --chain-master: join the shard's running chain, copying "
                              "its state from the chain while training goes on (a replica "
                              "named among the chain's founders before it runs takes its "
                              "place); a join that fails exits 1")
    network.add_argument("--advertise-address", metavar="HOST:PORT",
                         help="the address the chain master and the other replicas know this "
                              "replica by (default: --host and the bound port)")
    data = parser.add_argument_group("data")
    data.add_argument("--checkpoint-root", default=settings.CHECKPOINT_ROOT.get() or
                      settings.CHECKPOINT_DIR.get() or default_checkpoint_roots(), metavar="DIR",
                      help="the folders SaveShard may write checkpoints in, joined by "
                           f"'{os.pathsep}' (default: PSFLOW_CHECKPOINT_ROOT or "
                           "PSFLOW_CHECKPOINT_DIR, else the current directory and the system's "
                           "temporary folder, as under launch)")
    data.add_argument("--allow-nonfinite", action="store_true",
                      default=settings.ALLOW_NONFINITE.get(),
                      help="apply gradients that hold NaN or Inf (refused by default)")
    publishing = parser.add_argument_group("publishing to serving (the Follow rpc)")
    publishing.add_argument("--publish-period", type=seconds, default=0.2,
                            metavar="SECONDS",
                            help="how often the tables' changes go to followers (default 0.2)")
    publishing.add_argument("--dense-period", type=seconds, default=5.0,
                            metavar="SECONDS",
                            help="how often the dense variables' values go to followers "
                                 "(default 5)")
    publishing.add_argument("--follower-buffer-bytes", type=whole_number(1),
                            default=256 << 20, metavar="BYTES",
                            help="the most bytes kept for one follower; one further behind "
                                 "is dropped and resyncs (default 256 MiB)")
    metrics = parser.add_argument_group("metrics")
    metrics.add_argument("--metrics-port", type=port, metavar="PORT",
                         help="serve Prometheus metrics on http://HOST:PORT/metrics (0 picks a "
                              "free port; default: PSFLOW_METRICS_PORT, else none)")
    metrics.add_argument("--metrics-host", metavar="HOST",
                         help="the address the metrics are served on (default: "
                              "PSFLOW_METRICS_HOST, else --host)")
    lifecycle = parser.add_argument_group("lifecycle")
    lifecycle.add_argument("--parent-pid", type=whole_number(1),
                           help="exit when this process is gone")
    lifecycle.add_argument("--online", action="store_true", default=settings.ONLINE.get(),
                           help="online training: keep serving when every worker is done; on "
                                "SIGTERM/SIGINT, first wait (up to --stop-timeout) for the "
                                "workers at work to end, so the chief's final checkpoint can "
                                "be written; a second signal stops at once (default: "
                                "PSFLOW_ONLINE)")
    lifecycle.add_argument("--stop-timeout", type=seconds, default=120.0, metavar="SECONDS",
                           help="--online: the longest wait for the workers after a signal "
                                "(default: 120)")
    lifecycle.add_argument("--log-level", type=one_of(LOG_LEVELS), default="INFO",
                           help=f"one of {', '.join(LOG_LEVELS)} (default INFO)")
    args = parser.parse_args(argv)
    if args.join and not args.chain_master:
        parser.error("--join goes with --chain-master")
    try:
        settings.check()  # a bad PSFLOW_* variable stops here, before anything starts
    except settings.SettingError as exc:
        parser.error(str(exc))
    if args.metrics_port is None:
        try:
            args.metrics_port = monitoring.port_from_env()
        except ValueError as exc:
            parser.error(str(exc))
    args.metrics_host = args.metrics_host or settings.METRICS_HOST.get() or args.host
    if args.task_index is None or args.num_workers is None:
        try:
            task = task_config_from_env()
        except ValueError as exc:
            parser.error(str(exc))
        if task is None or task.task_type != "ps":
            parser.error("--task-index and --num-workers are required without a TF_CONFIG "
                         "whose task is a ps")
        if args.task_index is None:
            args.task_index = task.task_index
        if args.num_workers is None:
            args.num_workers = task.num_workers
    return args


def write_port_file(path, number):
    """Writes the port `number` to `path` so that a reader never sees a partial file."""
    atomic_write(path, f"{number}\n".encode())


SWITCH_INTERVAL_S = 0.0005


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    memory.tune_allocator()
    # A call that a sync step wakes waits for the interpreter lock while the thread that
    # decided the step runs on; the default 5 ms before it asks for its turn is longer than
    # a small model's step. (Python's default suits one busy thread, not a server's many.)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        server = ParameterServer(shard=args.task_index, num_workers=args.num_workers,
                                 host=args.host, port=args.port,
                                 port_fallback=args.port_fallback, parent_pid=args.parent_pid,
                                 checkpoint_root=args.checkpoint_root,
                                 allow_nonfinite=args.allow_nonfinite, insecure=args.insecure,
                                 publish_period=args.publish_period,
                                 dense_period=args.dense_period,
                                 follower_buffer_bytes=args.follower_buffer_bytes,
                                 online=args.online, chain_master=args.chain_master,
                                 heartbeat_s=args.heartbeat_interval,
                                 advertise=args.advertise_address)
        faults.install_from_env()
    except ValueError as exc:  # e.g. TLS files that cannot be read, a malformed PSFLOW_FAULT
        log.error("%s", exc)
        return 2
    # The handlers only note the signal; the loop below stops the server outside the
    # handler's frame (grpc's stop must not run inside a frame that may hold grpc's locks).
    signalled = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda num, frame: signalled.append(signal.Signals(num).name))
    try:
        server.start()
    except OSError as exc:
        log.error("%s", exc)
        return 1
    if args.port_file:
        try:
            write_port_file(args.port_file, server.port)
        except OSError as exc:
            log.error("cannot write the port file %s: %s", args.port_file, exc)
            server.stop(grace=0, reason="no port file")
            return 1
    if args.metrics_port is not None:
        from .shard_exporter import ShardCollector  # prometheus_client only when asked for
        try:
            monitoring.serve(ShardCollector(server.store, server.publisher),
                             args.metrics_port, args.metrics_host,
                             what=f"shard {args.task_index}'s metrics")
        except OSError as exc:  # the job goes on without them
            log.error("%s; shard %d serves no metrics", exc, args.task_index)
    joining = _start_join(server) if args.join else None
    draining_until = None
    while not server.wait_for_termination(0.2):
        if not signalled:
            continue
        if args.online and draining_until is None:
            # Workers stopped at the same moment (a Kubernetes delete) end their step, and the
            # chief writes its final checkpoint through this server: serve them till then.
            draining_until = time.monotonic() + args.stop_timeout
            log.info("shard %d got %s: serving until the workers at work end (at most %g s)",
                     args.task_index, signalled[0], args.stop_timeout)
        running = server.store.members.running() if args.online else []
        if not running or len(signalled) > 1 or time.monotonic() >= draining_until:
            server.stop(reason=f"got {signalled[0]}")
    log.info("shard %d exiting: %s", args.task_index, server.stop_reason)
    return 1 if joining and joining.failed else 0


class _Joining:
    """The thread that joins the server to its chain (ps/join.py); a join that fails stops
    the server (`failed`)."""

    def __init__(self, server):
        self.server, self.failed = server, False
        self.joiner = Joiner(server, server.chain_master, server.chain_address, server.token)

    def run(self):
        try:
            self.joiner.run()
        except JoinFailed as exc:
            log.error("shard %d: %s", self.server.shard, exc)
            self.failed = True
            self.server.stop(grace=0, reason=f"it could not join its chain: {exc}")


def _start_join(server):
    joining = _Joining(server)
    threading.Thread(target=joining.run, name=f"ps{server.shard}-join", daemon=True).start()
    return joining


if __name__ == "__main__":
    sys.exit(main())
