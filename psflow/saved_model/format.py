"""The on-disk format of a servable (docs/serving.md): a folder holding `saved_model.json`
(format name and version, meta graphs with their tags, signatures and pruned graphs, and the
size and SHA-256 of every other file), `variables.npz` (frozen Variable values by name),
`constants.npz` (the graph's constants and array attributes) and `tables/NAME.npz` (each
embedding table's sorted keys and rows).

Only JSON and .npz files read with allow_pickle=False: reading a servable never executes
code. A folder is written under a temporary name beside its destination, every file synced,
and renamed into place, so a reader sees a whole servable or none; any missing, truncated or
altered file is refused with a DataLossError naming it."""

import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile

import numpy as np

from ..checkpoint import write_arrays
from ..errors import DataLossError, NotFoundError
from ..fileio import atomic_write, fsync_dir

FORMAT = "psflow-saved-model"
VERSION = 1
MANIFEST = "saved_model.json"
VARIABLES = "variables.npz"
CONSTANTS = "constants.npz"
TABLES = "tables"
_DATA_FILE = re.compile(r"^(tables/)?[A-Za-z0-9_][A-Za-z0-9_.-]*\.npz$")
_VERSION_DIR = re.compile(r"^[0-9]+$")


def table_file(name, taken):
    """tables/NAME.npz for table `name`, its characters kept to a safe file name."""
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "table"
    candidate, n = f"{TABLES}/{base}.npz", 1
    while candidate in taken:
        candidate, n = f"{TABLES}/{base}-{n}.npz", n + 1
    return candidate


def write(export_dir, meta_graphs, variables, constants, tables):
    """Writes a servable to `export_dir`, which must not exist: `meta_graphs` [{"tags",
    "signature_def", "nodes"}], `variables` and `constants` {key: array}, `tables`
    {name: (keys, rows)}. Returns `export_dir`."""
    export_dir = os.path.abspath(export_dir)
    if os.path.exists(export_dir):
        raise FileExistsError(f"export directory {export_dir} already exists")
    parent = os.path.dirname(export_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = _fill_temporary(parent, meta_graphs, variables, constants, tables)
    try:
        os.rename(tmp, export_dir)
    except OSError:
        _remove(tmp)
        raise
    fsync_dir(parent)
    return export_dir


def write_version(base, meta_graphs, variables, constants, tables):
    """Writes a servable as BASE/N, N one more than the highest version there; returns its
    path. A reader listing BASE sees the version whole or not at all."""
    base = os.path.abspath(base)
    os.makedirs(base, exist_ok=True)
    tmp = _fill_temporary(base, meta_graphs, variables, constants, tables)
    try:
        while True:
            final = os.path.join(base, str(latest_version(base) + 1))
            try:
                os.rename(tmp, final)
                break
            except OSError:
                if not os.path.exists(final):
                    raise
    except BaseException:
        _remove(tmp)
        raise
    fsync_dir(base)
    return final


def latest_version(base):
    """The highest numbered version folder in `base` (0 when there is none)."""
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return 0
    return max((int(n) for n in names if _VERSION_DIR.match(n)), default=0)


def _fill_temporary(parent, meta_graphs, variables, constants, tables):
    tmp = tempfile.mkdtemp(prefix=".tmp-export-", dir=parent)
    try:
        os.chmod(tmp, 0o755)
        files, table_files = {}, {}
        for name, arrays in ((VARIABLES, variables), (CONSTANTS, constants)):
            files[name] = write_arrays(os.path.join(tmp, name), arrays)
        if tables:
            os.mkdir(os.path.join(tmp, TABLES))
        for name, (keys, rows) in sorted(tables.items()):
            path = table_files[name] = table_file(name, files)
            order = np.argsort(keys, kind="stable")
            files[path] = write_arrays(os.path.join(tmp, path),
                                       {"keys": np.asarray(keys, np.int64)[order],
                                        "values": rows[order]})
        if tables:
            fsync_dir(os.path.join(tmp, TABLES))
        manifest = {"format": FORMAT, "version": VERSION, "meta_graphs": meta_graphs,
                    "tables": table_files,
                    "files": {path: {"sha256": digest,
                                     "size": os.path.getsize(os.path.join(tmp, path))}
                              for path, digest in files.items()}}
        atomic_write(os.path.join(tmp, MANIFEST), json.dumps(manifest, indent=1).encode())
        return tmp
    except BaseException:
        _remove(tmp)
        raise


def _remove(path):
    shutil.rmtree(path, ignore_errors=True)


class Servable:
    """A servable as read: `manifest` (saved_model.json), `variables` and `constants`
    {key: read-only array}, `tables` {name: (keys, rows)}."""

    def __init__(self, export_dir, manifest, variables, constants, tables):
        self.export_dir, self.manifest = export_dir, manifest
        self.variables, self.constants, self.tables = variables, constants, tables

    @property
    def meta_graphs(self):
        return self.manifest["meta_graphs"]


def read(export_dir):
    """The Servable in `export_dir`. NotFoundError when there is none; DataLossError naming
    the file when one is missing, truncated, altered or malformed."""
    export_dir = os.path.abspath(export_dir)
    path = os.path.join(export_dir, MANIFEST)
    if not os.path.isdir(export_dir):
        raise NotFoundError(f"no servable at {export_dir}: no such directory")
    if not os.path.isfile(path):
        raise NotFoundError(f"no servable at {export_dir}: it has no {MANIFEST}")
    try:
        with open(path, "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataLossError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataLossError(f"{path} is not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise DataLossError(f"{path} is {FORMAT} version {manifest.get('version')!r}; this "
                            f"psflow reads version {VERSION}")
    try:
        files = manifest["files"]
        arrays = {name: _read_checked(export_dir, name, entry) for name, entry in files.items()}
        variables, constants = arrays[VARIABLES], arrays[CONSTANTS]
        tables = {}
        for name, file in manifest["tables"].items():
            fields = arrays[file]
            keys, rows = fields["keys"], fields["values"]
            if keys.ndim != 1 or rows.ndim != 2 or len(keys) != len(rows):
                raise DataLossError(f"{os.path.join(export_dir, file)}: keys {keys.shape} and "
                                    f"rows {rows.shape} do not match")
            tables[name] = (keys, rows)
        if not isinstance(manifest["meta_graphs"], list):
            raise TypeError("meta_graphs is not a list")
    except (KeyError, TypeError, AttributeError) as exc:
        raise DataLossError(f"{path} is malformed: {exc!r}") from None
    return Servable(export_dir, manifest, variables, constants, tables)


def _read_checked(export_dir, name, entry):
    if not isinstance(name, str) or not _DATA_FILE.match(name):
        raise DataLossError(f"{os.path.join(export_dir, MANIFEST)} names {name!r}, not a data "
                            "file of the servable")
    path = os.path.join(export_dir, name)
    if not os.path.isfile(path):
        raise DataLossError(f"servable file {path} is missing")
    size = os.path.getsize(path)
    if size != entry["size"]:
        raise DataLossError(f"servable file {path} has {size} bytes, {MANIFEST} says "
                            f"{entry['size']} (it was truncated or changed)")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != entry["sha256"]:
        raise DataLossError(f"servable file {path} does not match its SHA-256 in {MANIFEST} "
                            "(it was altered after it was written)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataLossError(f"servable file {path} cannot be read: {exc}") from None
    for array in arrays.values():
        array.setflags(write=False)
    return arrays
