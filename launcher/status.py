"""`launch --status`: a running job's table, read from its parameter servers.

    launch --status [ADDRESS[,ADDRESS...]] [--interval SECONDS] [--timeout SECONDS]

ADDRESS is a parameter server's host:port, shard 0 first: the list TF1 calls --ps_hosts, which
`launch` prints as it starts a job (`job status: launch --status ...`). Without addresses, the
one job `launch` runs on this machine is shown. Two looks at every shard, `--interval` seconds
apart, give the rates; shard 0 also knows the global step and the workers. Calls carry the
job's token: PSFLOW_AUTH_TOKEN, else that of the job `launch` runs on this machine on those
addresses (in its job folder, readable by its user alone). A job whose shards run as chains of
replicas (`launch --ps-replicas`) is read from each chain's current head. Exit codes: 0 when shard 0
answered, 1 when it did not (a message names the addresses) or no job was found, 2 on bad
arguments.
"""

import argparse
import json
import math
import os
import sys
import time

from psflow.argparsing import OneLineParser, seconds
from psflow.errors import PsflowError
from psflow.transport import auth
from psflow.worker.client import shard_clients
from psflow.worker.jobstats import Look, rates
from .job_folders import JOB_FILE, job_folders
from .progress import per_second, standout_notes, workers_parts

# The workers' steps and examples arrive with their heartbeats, once a second, so over T seconds
# a worker's rate may be off by one heartbeat's worth, 1/T of it. Over 1 s a running worker may
# show 0 steps/s; over 3 s two workers of one speed show at worst 2 and 4 heartbeats' worth, and
# neither is below half the other (the bound of the slowest-worker note).
DEFAULT_INTERVAL_S = 3.0
DEFAULT_TIMEOUT_S = 2.0
# The status options that take a value: arguments before --status may only be these.
VALUE_OPTIONS = ("--interval", "--timeout")


def requested(argv):
    """Whether `argv` asks for a job's status: --status comes before any argument but the
    other status options. (A job's options and script come first otherwise, and everything
    after the script is the script's, a --status included.)"""
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--status" or arg.startswith("--status="):
            return True
        if arg in VALUE_OPTIONS:
            index += 2
        elif arg.startswith(tuple(f"{option}=" for option in VALUE_OPTIONS)):
            index += 1
        else:
            return False
    return False


def addresses(text):
    """An argument type: host:port[,host:port...] (an IPv6 host in brackets), as a list."""
    found = []
    for item in text.split(","):
        host, colon, port = item.rpartition(":")
        bare_ipv6 = ":" in host and not (host.startswith("[") and host.endswith("]"))
        if not (colon and host and port.isdigit() and 0 < int(port) <= 65535) or bare_ipv6:
            raise argparse.ArgumentTypeError(
                f"{item!r} is not host:port (e.g. 127.0.0.1:2222; several separated by "
                "commas, shard 0 first)")
        found.append(item)
    return found


class StatusParser(OneLineParser):
    """Errors point at this command's own help (`launch --help` describes running a job)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --status HOST:PORT "
                     "--help)\n")


def build_parser():
    parser = StatusParser(
        prog="launch",
        usage="launch --status ADDRESS[,ADDRESS...] [--interval SECONDS] [--timeout SECONDS]",
        description="Show a running job as its parameter servers see it: per shard its "
                    "variables, pushes/s and staleness, per worker its step, steps/s, "
                    "examples/s, loss and activity. Calls carry PSFLOW_AUTH_TOKEN.")
    parser.add_argument("--status", type=addresses, required=True, nargs="?", const=[],
                        metavar="ADDRESS[,ADDRESS...]",
                        help="the parameter servers' host:port, comma-separated, shard 0 "
                             "first (as launch prints them when it starts a job); without "
                             "them, the job launch runs on this machine")
    parser.add_argument("--interval", type=seconds, default=DEFAULT_INTERVAL_S,
                        metavar="SECONDS",
                        help="time between the two looks the rates are measured over "
                             f"(default: {DEFAULT_INTERVAL_S:g})")
    parser.add_argument("--timeout", type=seconds, default=DEFAULT_TIMEOUT_S,
                        metavar="SECONDS",
                        help="how long each parameter server has to answer "
                             f"(default: {DEFAULT_TIMEOUT_S:g})")
    return parser


def human_bytes(count):
    """`640 B`, `1.5 KiB`, `12.0 MiB`."""
    if count < 1024:
        return f"{count} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        count /= 1024
        if count < 1024 or unit == "TiB":
            return f"{count:.1f} {unit}"


def table(headers, rows):
    """`rows` under `headers` in columns two spaces apart, as lines."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    return ["  ".join(str(cell).ljust(width)
                      for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in [headers, *rows]]


def _latest(before, now, shard):
    """The shard's stats from the later look that has them, or None."""
    for look in (now, before):
        if shard < len(look.shards) and look.shards[shard] is not None:
            return look.shards[shard]
    return None


def _answered(before, now, shard):
    count = sum(shard < len(look.shards) and look.shards[shard] is not None
                for look in (before, now))
    return {0: "no", 1: "1 of 2", 2: "yes"}[count]


def _staleness(between, shard):
    p50 = between.shard_staleness_percentile(shard, 0.5)
    if p50 is None:
        return "-"
    return f"{p50}/{between.shard_staleness_percentile(shard, 0.99)}"


def _state(worker):
    if worker.done:
        return "done"
    return "running" if worker.registered else "not joined"


def _worker_row(worker, between):
    index = worker.task_index
    return [index, worker.local_step,
            _rate_or_dash(between.worker_steps_per_s, index),
            _rate_or_dash(between.worker_examples_per_s, index),
            "-" if math.isnan(worker.loss) else f"{worker.loss:.4g}",
            f"{worker.last_seen_s:.1f} s ago" if worker.last_seen_s >= 0 else "never",
            _state(worker), worker.activity or "-"]


def _rate_or_dash(rates_by_key, key):
    value = rates_by_key.get(key)
    return per_second(value) if value is not None else "-"


def header(chief, between):
    """`global step 1200 | 35.2 steps/s | 1104 examples/s | loss 0.4321 | 1/2 workers done`
    and the notes on a worker or shard that stands out, from shard 0's stats (or None)."""
    if chief is None:
        return " | ".join(["global step unknown (parameter server 0 did not answer)",
                           *standout_notes(between)])
    parts = [f"global step {chief.global_step}"]
    if between.steps_per_s is not None:
        parts.append(f"{per_second(between.steps_per_s)} steps/s")
    if between.worker_examples_per_s:
        parts.append(f"{per_second(between.examples_per_s)} examples/s")
    parts += workers_parts(chief.workers)
    parts.append(f"rates over {between.seconds:.1f} s")
    return " | ".join(parts + standout_notes(between))


def render(addresses, before, now):
    """The status report of the job on the parameter servers at `addresses` from two Looks,
    as text."""
    between = rates(before, now)
    lines = [header(_latest(before, now, 0), between), ""]
    shards = []
    for shard, address in enumerate(addresses):
        stats = _latest(before, now, shard)
        shards.append([
            shard, address,
            stats.variables if stats is not None else "-",
            human_bytes(stats.variable_bytes) if stats is not None else "-",
            _rate_or_dash(between.shard_pushes_per_s, shard),
            _staleness(between, shard),
            _answered(before, now, shard)])
    lines += table(["shard", "address", "variables", "bytes", "pushes/s",
                    "staleness p50/p99", "answered"], shards)
    chief = _latest(before, now, 0)
    if chief is not None:
        lines.append("")
        if chief.workers:
            workers = sorted(chief.workers, key=lambda w: w.task_index)
            lines += table(["worker", "step", "steps/s", "examples/s", "loss", "last seen",
                            "state", "activity"], [_worker_row(w, between) for w in workers])
        else:
            lines.append("no worker has joined yet")
    return "\n".join(lines) + "\n"


def _one_line(text):
    return " ".join(text.split())


def _why(look):
    """The first reason a shard gave for not answering, for the message."""
    return _one_line(next(iter(look.errors.values()), "no answer"))


def running_jobs(folder=None):
    """[{"ps": addresses, "token": token}] of the jobs `launch` runs on this machine for
    this user (their job folders, whose launchers are alive)."""
    jobs = []
    for path, running in job_folders(folder):
        if not running:
            continue
        try:
            with open(os.path.join(path, JOB_FILE)) as f:
                job = json.load(f)
        except (OSError, ValueError):
            continue  # another user's, or a job still starting
        if isinstance(job, dict) and isinstance(job.get("ps"), list) and job["ps"]:
            jobs.append(job)
    return jobs


def _job_and_token(given, folder=None):
    """(addresses, token) to ask: the `given` addresses (or the one running job's) and
    PSFLOW_AUTH_TOKEN (or the running job's on those addresses). LookupError naming the
    problem when no job, or several, could be meant."""
    jobs = running_jobs(folder)
    if not given:
        if len(jobs) != 1:
            found = "; ".join(",".join(job["ps"]) for job in jobs)
            raise LookupError(f"{'no job' if not jobs else f'{len(jobs)} jobs'} launched on "
                              "this machine "
                              f"{'is running' if not jobs else f'are running ({found})'}; "
                              "give the parameter servers' addresses: launch --status "
                              "HOST:PORT[,HOST:PORT...]")
        given = jobs[0]["ps"]
    token = auth.token_from_env()
    if not token:
        token = next((job.get("token") or "" for job in jobs if job["ps"][0] == given[0]), "")
    return given, token


def _chain_master(given, folder=None):
    """The chain master of the job `launch` runs on this machine whose shards' heads (at the
    start) are `given`, when its shards run as chains of replicas; else None."""
    return next((job.get("chain_master") for job in running_jobs(folder)
                 if job["ps"] == list(given)), None)


def _clients(addresses, timeout, token, chain_master):
    """The shards' clients: with a chain master, each calls its chain's current head (the
    addresses are the heads at the start); without, or when the master does not answer, the
    servers at `addresses`."""
    if chain_master:
        try:
            return shard_clients(addresses, timeout=timeout, token=token,
                                 chain_master=chain_master)
        except PsflowError:
            pass
    return shard_clients(addresses, timeout=timeout, token=token)


def main(argv, folder=None):
    """`launch --status ...`; returns its exit code (2 leaves through SystemExit).
    `folder`: where `launch` keeps its job folders (default: the temporary folder)."""
    args = build_parser().parse_args(argv)
    try:
        args.status, token = _job_and_token(args.status, folder)
    except LookupError as exc:
        print(f"launch: {exc}", file=sys.stderr)
        return 1
    clients = _clients(args.status, args.timeout, token, _chain_master(args.status, folder))
    try:
        before = Look.take(clients, args.timeout)
        if all(stats is None for stats in before.shards):
            print(f"launch: no parameter server answered at {', '.join(args.status)} "
                  f"({_why(before)})", file=sys.stderr)
            return 1
        time.sleep(args.interval)
        now = Look.take(clients, args.timeout)
        asked = [client.address for client in clients]  # a chain's head may have changed
    finally:
        for client in clients:
            client.close()
    sys.stdout.write(render(asked, before, now))
    sys.stdout.flush()
    if before.chief is None and now.chief is None:
        why = _one_line(now.errors.get(0) or before.errors.get(0) or "no answer")
        print(f"launch: parameter server 0 at {args.status[0]} did not answer, so the global "
              f"step and the workers are unknown ({why})", file=sys.stderr)
        return 1
    return 0
