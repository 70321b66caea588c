"""Checkpoint files (numpy and JSON only): one `.npz` per parameter-server shard and a small
JSON index that ties a checkpoint's shard files together. Nothing is pickled: arrays are read with
`allow_pickle=False`, and the index records each shard file's SHA-256, so a truncated or
altered file is refused with an error that names it.

Layout of `checkpoint_dir`:

    checkpoint                      {"latest": "ckpt-000000001200"}  (the pointer)
    ckpt-000000001200/index.json    global step, variables, shard files with their parts,
                                    input positions of followed datasets (if any)
    ckpt-000000001200/shard-0.npz   values and optimizer slots of shard 0's parts
    model.npz                       the final model: one array per variable (load_model)

Every file is written under a temporary name and renamed into place, and the pointer moves
only after the whole checkpoint is written, so a crash at any moment leaves the previous
checkpoint as the latest one.

A shard file holds arrays named `a0, a1, ...` and a `manifest` (JSON as uint8) that says what
each one is: a part's value or one of its optimizer slots (rule, slot name). Its tables may be
a delta of the files the index names as its base (see psflow.checkpoint_chain).
"""

import hashlib
import json
import os
import re
import shutil
import uuid
import zipfile

import numpy as np

from . import checkpoint_chain
from .errors import DataLossError, InvalidArgumentError, NotFoundError
from .fileio import atomic_write, fsync_dir

FORMAT = "psflow-checkpoint-1"
POINTER = "checkpoint"
INDEX = "index.json"
MODEL_FILE = "model.npz"
_NAME = re.compile(r"^ckpt-(\d+)$")
# What an index may name: a file inside its checkpoint's folder, never a path elsewhere.
_SHARD_FILE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\.npz$")


def checkpoint_name(global_step):
    return f"ckpt-{int(global_step):012d}"


def write_arrays(path, arrays, manifest=None):
    """Writes {key: array} (and a JSON manifest) as an uncompressed .npz, atomically;
    returns its SHA-256."""
    payload = dict(arrays)
    if manifest is not None:
        payload["manifest"] = np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8)

    def write(out):
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for key, array in payload.items():
                with zf.open(f"{key}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asarray(array, order="C"),
                                              allow_pickle=False)
    return atomic_write(path, write)


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_arrays(path, sha256=None):
    """{key: array} of an .npz written by write_arrays; DataLossError if the file is missing,
    truncated, altered (when `sha256` is given) or not such a file."""
    if not os.path.isfile(path):
        raise DataLossError(f"checkpoint file {path} is missing")
    if sha256 is not None:
        actual = sha256_of(path)
        if actual != sha256:
            raise DataLossError(f"checkpoint file {path} does not match its checksum (it was "
                                f"truncated or changed after it was written): SHA-256 {actual}, "
                                f"expected {sha256}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataLossError(f"checkpoint file {path} cannot be read: {exc}") from None


def write_shard(path, values, slots, global_step, tables=None):
    """A shard file: `values` {part name: array}, `slots` {(part name, rule, slot): array},
    `global_step` (None on shards that do not hold it), `tables` {table name: {field:
    array}} (the shard's rows of each embedding table, see EmbeddingTable.state). Returns
    its SHA-256."""
    arrays, entries = {}, []
    for name, fields in (tables or {}).items():
        for field, array in fields.items():
            key = f"a{len(arrays)}"
            arrays[key] = array
            entries.append({"key": key, "table": name, "field": field})
    for name, array in values.items():
        key = f"a{len(arrays)}"
        arrays[key] = array
        entries.append({"key": key, "name": name})
    for (name, rule, slot), array in slots.items():
        key = f"a{len(arrays)}"
        arrays[key] = array
        entries.append({"key": key, "name": name, "rule": rule, "slot": slot})
    manifest = {"format": FORMAT, "global_step": global_step, "entries": entries}
    return write_arrays(path, arrays, manifest)


class ShardContents:
    """What one shard file holds, gathered variable by variable (a local session's store and
    a parameter server's shard alike): `values` {part name: array}, `slots` {(part name,
    rule, slot): array}, `tables` {table name: {field: array}}."""

    def __init__(self):
        self.values, self.slots, self.tables = {}, {}, {}

    def add(self, name, value, slots_by_rule, copy=False):
        """A part's value and its optimizer slots ({rule: {slot: array}}); with `copy`,
        copies of them, taken now (while the caller holds what guards them)."""
        self.values[name] = value.copy() if copy else value
        for rule, rule_slots in slots_by_rule.items():
            for slot, array in rule_slots.items():
                self.slots[(name, rule, slot)] = np.array(array, copy=True) if copy else array

    def write(self, path, global_step):
        """Writes the shard file (see write_shard); returns its SHA-256."""
        return write_shard(path, self.values, self.slots, global_step, self.tables)


def read_shard(path, sha256=None):
    """(values, slots, global_step) of a shard file (see write_shard)."""
    arrays = read_arrays(path, sha256)
    try:
        manifest = json.loads(arrays.pop("manifest").tobytes().decode())
        values, slots = {}, {}
        for entry in manifest["entries"]:
            array = arrays[entry["key"]]
            if "table" in entry:
                continue  # see read_shard_tables
            if "rule" in entry:
                slots[(entry["name"], entry["rule"], entry["slot"])] = array
            else:
                values[entry["name"]] = array
        return values, slots, manifest.get("global_step")
    except (KeyError, TypeError, ValueError) as exc:
        raise DataLossError(f"checkpoint file {path} has a malformed manifest: {exc!r}") from None


def read_shard_tables(path, sha256=None):
    """{table name: {field: array}} of a shard file (see write_shard)."""
    arrays = read_arrays(path, sha256)
    try:
        manifest = json.loads(arrays.pop("manifest").tobytes().decode())
        tables = {}
        for entry in manifest["entries"]:
            if "table" in entry:
                tables.setdefault(entry["table"], {})[entry["field"]] = arrays[entry["key"]]
        return tables
    except (KeyError, TypeError, ValueError) as exc:
        raise DataLossError(f"checkpoint file {path} has a malformed manifest: {exc!r}") from None


# -- whole checkpoints ------------------------------------------------------------------------
def variable_specs(variables):
    """{name: {"shape", "dtype"}} of graph Variables, as an index records them; an
    embedding table is {"table": {"dim"}, "dtype"} (its rows are in the shard files)."""
    specs = {}
    for v in variables:
        if v.is_table:
            specs[v.name] = {"table": {"dim": int(v.embedding_dim)},
                             "dtype": np.dtype(v.dtype).name}
        else:
            specs[v.name] = {"shape": [int(d) for d in v.shape],
                             "dtype": np.dtype(v.dtype).name}
    return specs


def read_tables(checkpoint):
    """{table name: {field: array}} of a checkpoint: every shard's rows of each table the
    index names (a delta applied to the files it extends), concatenated (a per-table scalar
    slot, as Adam's step count, is the largest of the shards')."""
    index = read_index(checkpoint)
    try:
        names = {name: spec for name, spec in index["variables"].items() if "table" in spec}
        if not names:
            return {}
        gathered = {name: {} for name in names}
        for shard in index["shards"]:
            if not isinstance(shard["file"], str) or not _SHARD_FILE.match(shard["file"]):
                raise DataLossError(f"checkpoint {checkpoint}: shard file {shard['file']!r} is "
                                    "not a file name inside the checkpoint")
            tables = checkpoint_chain.read_chain_tables(checkpoint, shard, read_shard_tables)
            for name, fields in tables.items():
                if name in gathered:
                    for field, array in fields.items():
                        gathered[name].setdefault(field, []).append(array)
        out = {}
        for name, fields in gathered.items():
            merged = {}
            for field, arrays in fields.items():
                if arrays[0].ndim == 0:
                    merged[field] = max(arrays, key=lambda a: a.item())
                else:
                    merged[field] = np.concatenate(arrays)
            values = merged.get("values")
            dim = names[name]["table"]["dim"]
            if values is None:
                merged = {"keys": np.zeros(0, np.int64),
                          "values": np.zeros((0, dim), names[name]["dtype"])}
            elif values.ndim != 2 or values.shape[1] != dim:
                raise DataLossError(f"checkpoint {checkpoint}: table {name!r} has rows of "
                                    f"shape {values.shape[1:]}, the index says dim {dim}")
            out[name] = merged
        return out
    except (KeyError, TypeError, ValueError) as exc:
        raise DataLossError(f"checkpoint {checkpoint} has a malformed index: {exc!r}") from None


def write_checkpoint(checkpoint_dir, write, max_to_keep):
    """Writes one checkpoint: `write(directory)` fills a fresh temporary directory with the
    shard files and returns (global step, shards, variable specs) for its index (see
    write_index), or those and the input positions; the directory is then renamed into
    place, the pointer moved to it, and old checkpoints pruned. Returns the checkpoint's
    directory."""
    os.makedirs(checkpoint_dir, exist_ok=True)
    tmp = os.path.join(checkpoint_dir, f".tmp-ckpt-{uuid.uuid4().hex}")
    os.mkdir(tmp)
    try:
        step, shards, variables, *positions = write(tmp)
        write_index(tmp, step, shards, variables, positions[0] if positions else ())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    name = checkpoint_name(step)
    final = os.path.join(checkpoint_dir, name)
    if os.path.exists(final):  # this step was saved already (say, periodically, then at the end)
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.rename(tmp, final)
        fsync_dir(checkpoint_dir)
    set_latest(checkpoint_dir, name)
    prune(checkpoint_dir, max_to_keep)
    return final


def write_index(directory, global_step, shards, variables, input_positions=()):
    """The index of a checkpoint in `directory`: `shards` [{"file", "sha256", "parts":
    {part name: [variable, start row, stop row]}}], `variables` {name: {"shape", "dtype"}},
    `input_positions` [(dataset, shard, num_shards, file, lines)]: how far the data of the
    followed datasets was consumed (see psflow.data.followed_files)."""
    index = {"format": FORMAT, "global_step": int(global_step), "shards": shards,
             "variables": variables}
    if input_positions:
        index["input_positions"] = [
            {"dataset": d, "shard": int(s), "num_shards": int(n), "file": f, "lines": int(k)}
            for d, s, n, f, k in input_positions]
    return atomic_write(os.path.join(directory, INDEX),
                         lambda out: out.write(json.dumps(index, indent=1).encode()))


def set_latest(checkpoint_dir, name):
    atomic_write(os.path.join(checkpoint_dir, POINTER),
                  lambda out: out.write(json.dumps({"latest": name}).encode()))


def latest(checkpoint_dir):
    """The directory of the latest complete checkpoint, or None when there is none."""
    try:
        with open(os.path.join(checkpoint_dir, POINTER)) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        name = json.loads(text)["latest"]
    except (ValueError, KeyError, TypeError):
        raise DataLossError(f"{os.path.join(checkpoint_dir, POINTER)} is not a checkpoint "
                            f"pointer: {text[:100]!r}") from None
    if not isinstance(name, str) or not _NAME.match(name):
        raise DataLossError(f"checkpoint pointer names {name!r}, not a checkpoint")
    return os.path.join(checkpoint_dir, name)


def prune(checkpoint_dir, max_to_keep):
    """Removes all but the newest `max_to_keep` checkpoints (and those whose files their
    deltas extend, see psflow.checkpoint_chain) and whatever an interrupted save left
    behind. The latest is always kept."""
    current = latest(checkpoint_dir)
    names = sorted(n for n in os.listdir(checkpoint_dir) if _NAME.match(n))
    keep = set(names[-max_to_keep:]) if max_to_keep and max_to_keep > 0 else set(names)
    if current:
        keep.add(os.path.basename(current))
    for name in list(keep):  # and the files their deltas extend
        try:
            keep |= checkpoint_chain.needed_checkpoints(
                read_index(os.path.join(checkpoint_dir, name)))
        except DataLossError:
            pass  # an unreadable checkpoint extends nothing
    for name in names:
        if name not in keep:
            shutil.rmtree(os.path.join(checkpoint_dir, name), ignore_errors=True)
    # What a crash left half-written (one chief writes, so nothing is being written now).
    for name in os.listdir(checkpoint_dir):
        if name.startswith(".tmp-"):
            path = os.path.join(checkpoint_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass


def read_index(checkpoint):
    path = os.path.join(checkpoint, INDEX)
    try:
        with open(path) as f:
            index = json.load(f)
    except FileNotFoundError:
        raise DataLossError(f"checkpoint {checkpoint} has no {INDEX}") from None
    except ValueError as exc:
        raise DataLossError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DataLossError(f"{path} is not a {FORMAT} index")
    return index


def read_checkpoint(checkpoint):
    """(global step, {variable: full value}, {(variable, rule, slot): full value}) of a
    checkpoint directory, whatever the number of shards it was written with."""
    index = read_index(checkpoint)
    pieces, slot_pieces = {}, {}
    try:
        for shard in index["shards"]:
            if not isinstance(shard["file"], str) or not _SHARD_FILE.match(shard["file"]):
                raise DataLossError(f"checkpoint {checkpoint}: shard file {shard['file']!r} is "
                                    "not a file name inside the checkpoint")
            values, slots, _ = read_shard(os.path.join(checkpoint, shard["file"]),
                                          shard["sha256"])
            parts = shard["parts"]
            for part, (variable, start, _stop) in parts.items():
                if part not in values:
                    raise DataLossError(f"{shard['file']} lacks part {part!r} of {variable!r}")
                pieces.setdefault(variable, []).append((start, values[part]))
            for (part, rule, slot), array in slots.items():
                if part in parts:
                    variable, start, _ = parts[part]
                    slot_pieces.setdefault((variable, rule, slot), []).append((start, array))
        variables = {}
        for name, spec in index["variables"].items():
            if "table" in spec:
                continue  # see read_tables
            parts = sorted(pieces.get(name, []), key=lambda p: p[0])
            if not parts:
                raise DataLossError(f"checkpoint {checkpoint} has no value for {name!r}")
            value = parts[0][1] if len(parts) == 1 else np.concatenate([p[1] for p in parts])
            if list(value.shape) != list(spec["shape"]) or value.dtype.name != spec["dtype"]:
                raise DataLossError(f"checkpoint {checkpoint}: {name!r} is {value.dtype.name} "
                                    f"{list(value.shape)}, the index says {spec['dtype']} "
                                    f"{spec['shape']}")
            variables[name] = value
        slots = {}
        for key, parts in slot_pieces.items():
            parts.sort(key=lambda p: p[0])
            full = variables[key[0]]
            arrays = [p[1] for p in parts]
            # A slot shaped like its part is split like it; a per-part scalar (Adam's step
            # count) is the same on every part.
            if arrays[0].ndim and len(arrays) > 1 and arrays[0].shape[1:] == full.shape[1:]:
                slots[key] = np.concatenate(arrays)
            else:
                slots[key] = arrays[0]
        return int(index["global_step"]), variables, slots
    except (KeyError, TypeError, ValueError) as exc:
        raise DataLossError(f"checkpoint {checkpoint} has a malformed index: {exc!r}") from None


def model_arrays(checkpoint):
    """{name: array} of a checkpoint as a model file holds it: each variable's value, and each
    embedding table as NAME/keys and NAME/values."""
    arrays = dict(read_checkpoint(checkpoint)[1])
    for name, fields in read_tables(checkpoint).items():
        order = np.argsort(fields["keys"], kind="stable")  # the same for any shard count
        arrays[f"{name}/keys"] = fields["keys"][order]
        arrays[f"{name}/values"] = fields["values"][order]
    return arrays


def export_model(path, variables):
    """The final model as one .npz (one array per variable, keyed by its name; a table as
    NAME/keys and NAME/values)."""
    return write_arrays(path, variables)


def lookup(model, name, keys):
    """Rows of embedding table `name` for `keys` (any int shape) from a model (load_model's
    dict, or a path load_model reads), for serving: zeros for keys the table has no row for.
    Result shape: keys.shape + (dim,)."""
    if not isinstance(model, dict):
        model = load_model(model)
    table_keys, values = model.get(f"{name}/keys"), model.get(f"{name}/values")
    if table_keys is None or values is None:
        tables = sorted(k[:-len("/keys")] for k in model if k.endswith("/keys"))
        raise NotFoundError(f"the model has no embedding table {name!r}; its tables: "
                            f"{', '.join(tables) or 'none'}")
    keys = np.asarray(keys)
    if keys.dtype.kind not in "iu":
        raise InvalidArgumentError(f"lookup in table {name!r}: keys must be integers, got "
                                   f"{keys.dtype.name}")
    flat = keys.astype(np.int64).reshape(-1)
    order = np.argsort(table_keys, kind="stable")
    ordered = table_keys[order]
    at = np.minimum(np.searchsorted(ordered, flat), max(ordered.size - 1, 0))
    found = (ordered.size > 0) & (ordered[at] == flat) if ordered.size else \
        np.zeros(flat.size, dtype=bool)
    out = np.zeros((flat.size, values.shape[1]), dtype=values.dtype)
    out[found] = values[order[at[found]]]
    return out.reshape(keys.shape + (values.shape[1],))


def load_model(path):
    """{variable name: numpy array} from the model file a training job exported (its
    checkpoint_dir's model.npz), or from a checkpoint directory or a checkpoint_dir, taking
    the latest checkpoint's values. The model file is a plain .npz: `numpy.load(path)` reads
    it too."""
    if os.path.isdir(path):
        checkpoint = latest(path) if os.path.exists(os.path.join(path, POINTER)) else path
        if checkpoint is None or not os.path.exists(os.path.join(checkpoint, INDEX)):
            raise NotFoundError(f"no checkpoint in {path}")
        return model_arrays(checkpoint)
    arrays = read_arrays(path)
    arrays.pop("manifest", None)
    return arrays
