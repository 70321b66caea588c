"""`python -m psflow.ps`: serve one parameter-server shard until the job is over."""

import argparse
import logging
import os
import signal
import sys
import tempfile

from .server import ParameterServer

log = logging.getLogger("psflow.ps")


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _index(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _port(text):
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {value}")
    return value


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m psflow.ps",
                                     description="Serve one parameter-server shard.")
    parser.add_argument("--task-index", type=_index, required=True,
                        help="this shard's index; shard 0 holds the global step")
    parser.add_argument("--num-workers", type=_positive, required=True,
                        help="workers in the job; the server exits when all have finished")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=_port, default=0, help="port to bind; 0 picks a free one")
    parser.add_argument("--port-fallback", action="store_true",
                        help="bind any free port when --port is taken")
    parser.add_argument("--port-file", help="write the bound port to this file")
    parser.add_argument("--parent-pid", type=_positive,
                        help="exit when this process is gone")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def _write_port(path, port):
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".port-")
    with os.fdopen(fd, "w") as out:
        out.write(f"{port}\n")
    os.replace(tmp, path)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = ParameterServer(shard=args.task_index, num_workers=args.num_workers,
                             host=args.host, port=args.port, port_fallback=args.port_fallback,
                             parent_pid=args.parent_pid)
    try:
        server.start()
    except OSError as exc:
        log.error("%s", exc)
        return 1
    if args.port_file:
        _write_port(args.port_file, server.port)

    def on_signal(signum, frame):
        # Stop from another thread: grpc's stop() must not run inside a signal handler's frame
        # that may hold its locks.
        import threading
        threading.Thread(target=server.stop, args=(signal.Signals(signum).name,),
                         daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not server.wait(0.5):
        pass
    log.info("shard %d exiting: %s", args.task_index, server.stop_reason)
    return 0


if __name__ == "__main__":
    sys.exit(main())
