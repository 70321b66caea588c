"""Reading servables back into a graph: TF1's `loader.load(sess, tags, export_dir)`, which
adds a meta graph's nodes to the session's graph so that `sess.run` takes the signature's
tensor names, and `import_meta_graph`, which the Predictor builds on."""

import os

import numpy as np

from ..errors import DataLossError, NotFoundError
from . import format as servable_format
from . import graph_io
from .frozen_table import TableRows
from .signature_def_utils import SignatureDef, TensorInfo


class MetaGraphDef:
    """What `load` returns: `signature_def` {key: SignatureDef}, the meta graph's `tags`,
    and the loaded `nodes` in the session's graph."""

    def __init__(self, tags, signature_def, nodes):
        self.tags = list(tags)
        self.signature_def = signature_def
        self.nodes = nodes

    @property
    def meta_info_def(self):
        return self  # TF1 reads meta_graph_def.meta_info_def.tags


def load(sess, tags, export_dir, import_scope=None, **saver_kwargs):
    """Adds the meta graph of `export_dir` tagged `tags` to `sess`'s graph, its Variables as
    constants holding their exported values; returns its MetaGraphDef. NotFoundError when
    there is no servable or no meta graph with those tags; DataLossError naming the file
    when the export is damaged."""
    if import_scope is not None:
        raise NotImplementedError("loader.load: import_scope is not supported; load into a "
                                  "session of a new graph instead")
    servable = servable_format.read(export_dir)
    meta = meta_graph_of(servable, tags)
    nodes, signatures = import_meta_graph(servable, meta, sess.graph)
    return MetaGraphDef(meta["tags"], signatures, nodes)


def maybe_saved_model_directory(export_dir):
    """Whether `export_dir` holds a servable's manifest."""
    return os.path.isfile(os.path.join(export_dir, servable_format.MANIFEST))


def meta_graph_of(servable, tags):
    """The meta graph record of `servable` whose tag set is `tags`."""
    wanted = sorted([tags] if isinstance(tags, str) else tags)
    try:
        for meta in servable.meta_graphs:
            if sorted(meta["tags"]) == wanted:
                return meta
        found = [m["tags"] for m in servable.meta_graphs]
    except (KeyError, TypeError) as exc:
        raise DataLossError(f"{_manifest(servable)} is malformed: {exc!r}") from None
    raise NotFoundError(f"{servable.export_dir} has no meta graph tagged {wanted}; its tag "
                        f"sets: {found}")


def import_meta_graph(servable, meta, graph):
    """(nodes, {signature key: SignatureDef}) of meta graph `meta` rebuilt in `graph`."""
    where = _manifest(servable)
    tables = {name: TableRows(keys, rows) for name, (keys, rows) in servable.tables.items()}
    try:
        records, signature_records = meta["nodes"], meta["signature_def"]
        nodes = graph_io.deserialize(records, graph, servable.constants, servable.variables,
                                     tables, where)
        names = {node.name for node in nodes}
        signatures = {}
        for key, record in signature_records.items():
            inputs, outputs = (_infos(record[part], names, where)
                               for part in ("inputs", "outputs"))
            signatures[key] = SignatureDef(inputs, outputs, record["method_name"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataLossError(f"{where} is malformed: {exc!r}") from None
    return nodes, signatures


def _infos(record, names, where):
    infos = {}
    for key, info in record.items():
        if info["name"] not in names:
            raise DataLossError(f"{where}: a signature names {info['name']!r}, which is not a "
                                "node of its graph")
        shape = info["shape"]
        infos[key] = TensorInfo(info["name"], np.dtype(info["dtype"]),
                                None if shape is None else tuple(shape))
    return infos


def _manifest(servable):
    return os.path.join(servable.export_dir, servable_format.MANIFEST)
