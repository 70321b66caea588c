"""`launch`: run a psflow job as local processes.

    launch --workers N --ps M [--mode async] script.py [script args...]

Everything after the script's path goes to the script.
"""

import argparse
import os
import sys

from .supervisor import JobSpec, run_job

MODES = ("async",)


def _count(what):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a whole number, got {text!r}") \
                from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{what} must be at least 1, got {value}")
        return value
    return parse


def _port(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a number from 0 to 65535, got {value}")
    return value


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {value}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog="launch", description="Run a psflow training job as local processes: parameter "
        "servers on free loopback ports, then the workers running SCRIPT.")
    job = parser.add_argument_group("job")
    job.add_argument("--workers", type=_count("--workers"), required=True, metavar="N",
                     help="worker processes, each running the script")
    job.add_argument("--ps", type=_count("--ps"), required=True, metavar="M",
                     help="parameter-server processes (shards)")
    job.add_argument("--mode", choices=MODES, default="async",
                     help="how workers' gradients are applied (default: async)")
    network = parser.add_argument_group("network")
    network.add_argument("--ps-port", type=_port, default=0, metavar="PORT",
                         help="first port for the parameter servers (PS i tries PORT+i and "
                              "takes any free port if that is taken); 0 (default) picks free "
                              "ports")
    supervision = parser.add_argument_group("supervision")
    supervision.add_argument("--grace-period", type=_seconds, default=5.0, metavar="SECONDS",
                             help="how long processes get to stop after SIGTERM before "
                                  "SIGKILL (default 5)")
    supervision.add_argument("--no-progress", action="store_true",
                             help="do not show the job's progress line")
    parser.add_argument("script", help="the training script every worker runs")
    parser.add_argument("script_args", nargs=argparse.REMAINDER,
                        help="arguments passed to the script")
    return parser


def parse_args(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not os.path.isfile(args.script):
        parser.error(f"script not found: {args.script}")
    if args.ps_port and args.ps_port + args.ps - 1 > 65535:
        parser.error(f"--ps-port {args.ps_port} leaves no room for {args.ps} servers")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    spec = JobSpec(script=args.script, script_args=args.script_args, workers=args.workers,
                   ps=args.ps, mode=args.mode, ps_port=args.ps_port,
                   grace_period=args.grace_period, progress=not args.no_progress)
    code = run_job(spec)
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
