"""A local job's folders: each job keeps its PS port files and its job file (the parameter
servers' addresses and the job's token, readable by its user alone) in a temporary folder
named after its launcher's pid, so that `launch --status` finds a running job and a later
launch removes the folders of launchers that are gone."""

import os
import shutil
import tempfile

from psflow.parent import alive
from psflow.transport.auth import JOB_FILE, JOB_FOLDER_PREFIX  # noqa: F401 -- re-exported

TMP_PREFIX = JOB_FOLDER_PREFIX  # the job's folder: TMP_PREFIX<launcher pid>-<random>


def job_folders(folder=None):
    """[(path, whether its launcher is alive)] of the job folders in `folder` (default: the
    temporary folder), by name."""
    folder = folder or tempfile.gettempdir()
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    found = []
    for name in names:
        owner = name[len(TMP_PREFIX):].split("-", 1)[0]
        if name.startswith(TMP_PREFIX) and owner.isdigit():
            found.append((os.path.join(folder, name), alive(int(owner))))
    return found


def remove_leftovers(folder=None):
    """Removes the job folders of launchers that are gone (killed before they could clean up);
    returns their paths."""
    removed = []
    for path, running in job_folders(folder):
        if not running:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def new_job_folder():
    """Makes the folder of a job this process launches; returns its path."""
    return tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-")


