"""Incremental checkpoints of embedding tables: a shard file may hold only the table rows its
shard changed or removed since its previous checkpoint (a delta), tied by the index to the
files it extends.

A shard's record in an index (see psflow.checkpoint.write_index) may say:

    "table_seq": 4711                 the shard's change sequence its tables are complete up to
    "incarnation": "9f0c..."          the shard process those sequence numbers belong to
    "base": [{"checkpoint": "ckpt-000000001000", "file": "shard-0.npz", "sha256": "..."},
             ...]                     a delta: the full file it extends, then each earlier delta

A delta's tables hold the rows changed after the previous checkpoint's `table_seq` (their
values, last steps, optimizer slots), the sighting counts changed, and the keys whose rows
were removed (field `removed`); its dense variables are whole. Reading a table applies the
chain in order: removed keys go, changed rows replace or join the others (see
EmbeddingTable.changes_since: changes are states, so this gives the table as it was).
Each link is checked against its SHA-256, so a missing or altered one is refused naming it.
"""

import os
import re

import numpy as np

from .errors import DataLossError

_NAME = re.compile(r"^ckpt-(\d+)$")
_SHARD_FILE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\.npz$")
DEFAULT_FULL_EVERY = 10
_ENTRY_FIELDS = ("entry_keys", "entry_freq")


def delta_bases(previous, index, num_shards, full_every):
    """What each of `num_shards` shards may write a delta against: a list (by shard) of
    (since sequence, incarnation, links) or None (a full file), from the `index` of the
    `previous` checkpoint (its directory; None for none). One checkpoint in `full_every` is
    full (0 or 1: all of them)."""
    none = [None] * num_shards
    if previous is None or index is None or not full_every or int(full_every) <= 1:
        return none
    try:
        records = index["shards"]
    except (KeyError, TypeError):
        return none
    if not isinstance(records, list) or len(records) != num_shards:
        return none
    out = []
    for shard, record in enumerate(records):
        try:
            if record["file"] != f"shard-{shard}.npz":
                raise ValueError(f"shard {shard} wrote {record['file']!r}")
            seq, incarnation = int(record["table_seq"]), int(record["incarnation"], 16)
            links = list(record.get("base", []))
            link = {"checkpoint": os.path.basename(previous), "file": record["file"],
                    "sha256": record["sha256"]}
        except (KeyError, TypeError, ValueError, AttributeError):
            out.append(None)
            continue
        out.append((seq, incarnation, links + [link])
                   if seq > 0 and len(links) + 2 <= int(full_every) else None)
    return out


def shard_record(record, delta, table_seq, incarnation, links):
    """`record` (a shard's entry of an index) with its table sequence, incarnation and, for
    a delta, the links it extends."""
    record = dict(record, table_seq=int(table_seq), incarnation=f"{int(incarnation):016x}")
    if delta:
        record["base"] = list(links)
    return record


def link_paths(checkpoint, record):
    """[(path, sha256)] of the files a shard record's delta extends, oldest first ([] for a
    full file)."""
    links = record.get("base", [])
    if not isinstance(links, list):
        raise DataLossError(f"checkpoint {checkpoint}: {record.get('file')!r} names its base "
                            f"as {links!r}, not a list of files")
    parent = os.path.dirname(os.path.abspath(checkpoint))
    out = []
    for link in links:
        name, file, sha256 = (link.get(k) for k in ("checkpoint", "file", "sha256")) \
            if isinstance(link, dict) else (None, None, None)
        if not isinstance(name, str) or not _NAME.match(name) or not isinstance(file, str) \
                or not _SHARD_FILE.match(file) or not isinstance(sha256, str):
            raise DataLossError(f"checkpoint {checkpoint}: the base {link!r} of "
                                f"{record.get('file')!r} is not a shard file of a checkpoint "
                                "beside it with its SHA-256")
        out.append((os.path.join(parent, name, file), sha256))
    return out


def needed_checkpoints(index):
    """The names of the checkpoints whose files the deltas of a checkpoint (its `index`)
    extend (a malformed index needs none)."""
    try:
        records = index["shards"]
        return {link["checkpoint"] for record in records for link in record.get("base", [])
                if isinstance(link, dict) and isinstance(link.get("checkpoint"), str)}
    except (KeyError, TypeError, AttributeError):
        return set()


def _among(keys, chosen):
    """Whether each of `keys` is one of `chosen` (a few, beside a table's keys): a search in
    the sorted `chosen`, which costs the table's keys once, not a sort of them."""
    chosen = np.sort(chosen)
    if not chosen.size:
        return np.zeros(keys.size, dtype=bool)
    at = np.minimum(np.searchsorted(chosen, keys), chosen.size - 1)
    return chosen[at] == keys


def _row_field(field, array):
    return field in ("values", "last_step") or (field.startswith("slot/") and
                                                np.ndim(array) == 2)


def apply_delta(table, fields, delta, path):
    """The fields of table `table` after the delta `delta` (a delta file's fields of it, read
    from `path`) on `fields` (the table as of the delta's base): removed keys go (rows and
    sightings), changed rows and sightings replace or join the others, per-table scalars are
    the delta's."""
    if not fields:  # the full file a chain starts from
        return {field: array for field, array in delta.items() if field != "removed"}
    removed = np.asarray(delta.get("removed", np.zeros(0, np.int64)), dtype=np.int64)
    keys = np.asarray(fields.get("keys", np.zeros(0, np.int64)), dtype=np.int64)
    new_keys = np.asarray(delta.get("keys", np.zeros(0, np.int64)), dtype=np.int64)
    kept = ~_among(keys, np.concatenate([removed, new_keys]))
    out = {"keys": np.concatenate([keys[kept], new_keys])}
    names = (set(fields) | set(delta)) - {"keys", "removed", *_ENTRY_FIELDS}
    for field in sorted(names):
        old, new = fields.get(field), delta.get(field)
        if not _row_field(field, new if new is not None else old):
            out[field] = new if new is not None else old
            continue
        if (old is None and kept.any()) or (new is None and new_keys.size):
            raise DataLossError(f"checkpoint file {path}: table {table!r} has {field} for "
                                "some of its rows only")
        pieces = ([] if old is None else [np.asarray(old)[kept]]) + \
            ([] if new is None else [np.asarray(new)])
        out[field] = np.concatenate(pieces)
    if "entry_keys" in fields or "entry_keys" in delta:
        entry_keys = np.asarray(fields.get("entry_keys", np.zeros(0, np.int64)), np.int64)
        new_entries = np.asarray(delta.get("entry_keys", np.zeros(0, np.int64)), np.int64)
        entry_kept = ~_among(entry_keys, np.concatenate([removed, new_entries]))
        out["entry_keys"] = np.concatenate([entry_keys[entry_kept], new_entries])
        if "entry_freq" in fields or "entry_freq" in delta:
            old = np.asarray(fields.get("entry_freq", np.zeros(entry_keys.size, np.int32)))
            new = np.asarray(delta.get("entry_freq", np.zeros(new_entries.size, np.int32)))
            out["entry_freq"] = np.concatenate([old[entry_kept], new.astype(old.dtype)])
    return out


def read_chain_tables(checkpoint, record, read_file):
    """{table: {field: array}} of one shard record of `checkpoint`: its file's tables, after
    the files its delta extends (if any) applied in order. `read_file(path, sha256)` reads a
    shard file's tables (psflow.checkpoint.read_shard_tables)."""
    own = os.path.join(checkpoint, record["file"])
    links = link_paths(checkpoint, record)
    if not links:
        tables = read_file(own, record["sha256"])
        for fields in tables.values():
            fields.pop("removed", None)
        return tables
    tables = {}
    for path, sha256 in links + [(own, record["sha256"])]:
        for name, fields in read_file(path, sha256).items():
            tables[name] = apply_delta(name, tables.get(name, {}), fields, path)
    return tables
