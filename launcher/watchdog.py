"""Takes a job down when its launcher dies without doing so (SIGKILL, a crash).

The launcher starts this script (run as a file, so it imports nothing of psflow) in a session
of its own, and writes to its standard input one line per thing to clean up:

    group PGID      a child's process group: the child and whatever it started
    dir PATH        a folder of the job's (the PS port files)
    forget PGID     that group was reaped by the launcher itself
    exit            the launcher tore the job down; nothing to do

When its input ends without `exit`, the launcher is gone: every group gets SIGKILL (so also
processes a worker script started itself, or a worker that has not yet created its psflow
session) and the folders are removed. Then it exits.
"""

import os
import shutil
import signal
import sys


def main():
    # Its own session keeps terminal signals away; what the launcher does not say, it ignores.
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    groups, folders = set(), []
    for line in sys.stdin:
        word, _, rest = line.strip().partition(" ")
        if word == "exit":
            return 0
        if word == "group" and rest.isdigit():
            groups.add(int(rest))
        elif word == "forget" and rest.isdigit():
            groups.discard(int(rest))
        elif word == "dir" and rest:
            folders.append(rest)
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
