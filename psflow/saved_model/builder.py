"""Writing servables: TF1's `SavedModelBuilder` and `simple_save`, and `export_version`,
which writes the next numbered version under a base path (BASE/1, BASE/2, ...).

Each meta graph holds the subgraph its signatures need, pruned from their inputs to their
outputs, with every Variable it reads frozen to its current value and every embedding table
to its keys and rows (see graph_io and frozen_values)."""

import os

from ..variables import Variable
from . import format as servable_format
from . import frozen_values, graph_io, signature_constants, tag_constants
from .signature_def_utils import SignatureDef, predict_signature_def


class SavedModelBuilder:
    """Builds a servable in `export_dir` (which must not exist yet): call
    `add_meta_graph_and_variables(sess, tags, signature_def_map)` once, `add_meta_graph`
    for more tag sets, then `save()`."""

    def __init__(self, export_dir):
        self._export_dir = export_dir
        if os.path.exists(export_dir):
            raise FileExistsError(f"export directory {export_dir} already exists; a "
                                  "SavedModelBuilder writes a new one")
        self._session = None
        self._meta_graphs = []
        self._variables, self._tables = {}, {}
        self._constants = graph_io.ArraySink()

    def add_meta_graph_and_variables(self, sess, tags, signature_def_map=None,
                                     assets_collection=None, legacy_init_op=None,
                                     clear_devices=False, main_op=None,
                                     strip_default_attrs=False, saver=None):
        """Adds the meta graph of `tags` whose signatures are `signature_def_map` ({key:
        SignatureDef}), freezing the values its Variables and tables hold in `sess` now.
        Assets, init ops and savers are accepted for TF1 compatibility; a servable has none."""
        if self._session is not None:
            raise AssertionError("the variables were saved already; call add_meta_graph() "
                                 "for another tag set")
        self._session = session_of(sess)
        self._add(tags, signature_def_map)

    def add_meta_graph(self, tags, signature_def_map=None, assets_collection=None,
                       legacy_init_op=None, clear_devices=False, main_op=None,
                       strip_default_attrs=False, saver=None):
        """Adds another meta graph of the same session's graph under `tags`."""
        if self._session is None:
            raise AssertionError("call add_meta_graph_and_variables() first")
        self._add(tags, signature_def_map)

    def _add(self, tags, signature_def_map):
        tags = [tags] if isinstance(tags, str) else [str(t) for t in tags]
        if any(sorted(m["tags"]) == sorted(tags) for m in self._meta_graphs):
            raise ValueError(f"a meta graph with tags {tags} was added already")
        meta_graph, variables, tables = freeze(
            self._session, tags, signature_def_map, self._constants,
            near=os.path.dirname(os.path.abspath(self._export_dir)))
        self._meta_graphs.append(meta_graph)
        self._variables.update(variables)
        self._tables.update(tables)

    def save(self, as_text=False):
        """Writes the servable (atomically); returns its directory."""
        if not self._meta_graphs:
            raise AssertionError("nothing to save: call add_meta_graph_and_variables() first")
        return servable_format.write(self._export_dir, self._meta_graphs, self._variables,
                                     self._constants.arrays, self._tables)


def simple_save(session, export_dir, inputs, outputs, legacy_init_op=None):
    """TF1's simple_save: a servable in `export_dir` tagged "serve" with one predict
    signature, "serving_default", of `inputs` and `outputs` ({key: node})."""
    builder = SavedModelBuilder(export_dir)
    builder.add_meta_graph_and_variables(
        session, [tag_constants.SERVING],
        {signature_constants.DEFAULT_SERVING_SIGNATURE_DEF_KEY:
         predict_signature_def(inputs, outputs)})
    return builder.save()


def export_version(base, session, inputs=None, outputs=None, signature_def_map=None,
                   tags=(tag_constants.SERVING,), checkpoint=None):
    """Writes the next numbered version of a servable under `base` (BASE/N+1, written aside
    and renamed in) and returns its path. Give `inputs` and `outputs` ({key: node}) for one
    predict signature, or a `signature_def_map`. With `checkpoint` (a checkpoint
    directory) the values are that checkpoint's rather than the session's."""
    signature_def_map = signature_map(inputs, outputs, signature_def_map)
    sink = graph_io.ArraySink()
    meta_graph, variables, tables = freeze(session_of(session), list(tags), signature_def_map,
                                           sink, near=base, checkpoint=checkpoint)
    return servable_format.write_version(base, [meta_graph], variables, sink.arrays, tables)


def signature_map(inputs=None, outputs=None, signature_def_map=None):
    """{key: SignatureDef} from either a map or the inputs and outputs of one predict
    signature (then keyed "serving_default")."""
    if signature_def_map is not None:
        if inputs is not None or outputs is not None:
            raise ValueError("give inputs and outputs, or a signature_def_map, not both")
        return signature_def_map
    if inputs is None or outputs is None:
        raise ValueError("give inputs and outputs ({key: node}), or a signature_def_map")
    return {signature_constants.DEFAULT_SERVING_SIGNATURE_DEF_KEY:
            predict_signature_def(inputs, outputs)}


def session_of(sess):
    """The psflow Session behind `sess` (a MonitoredTrainingSession's own session)."""
    if hasattr(sess, "store") and hasattr(sess, "graph"):
        return sess
    inner = getattr(sess, "session", None)
    if inner is not None and hasattr(inner, "store"):
        return inner
    raise TypeError(f"cannot export from {sess!r}: not a psflow Session")


def freeze(session, tags, signature_def_map, constants, near=None, checkpoint=None):
    """(meta graph record, {variable name: value}, {table name: (keys, rows)}) of the
    subgraph `signature_def_map` needs in `session`'s graph."""
    if not isinstance(signature_def_map, dict) or not signature_def_map:
        raise ValueError("a servable needs a signature_def_map {key: SignatureDef}")
    by_name = {node.name: node for node in session.graph.nodes}
    inputs, outputs = [], []
    for key, signature in signature_def_map.items():
        if not isinstance(signature, SignatureDef):
            raise TypeError(f"signature {key!r} is not a SignatureDef (build it with "
                            "signature_def_utils.predict_signature_def)")
        for infos, into in ((signature.inputs, inputs), (signature.outputs, outputs)):
            for info in infos.values():
                node = by_name.get(info.name)
                if node is None:
                    raise ValueError(f"signature {key!r} names {info.name!r}, which is not a "
                                     "node of the session's graph")
                into.append(node)
    nodes = graph_io.prune(outputs + inputs, inputs)
    fed = set(inputs)
    variables = [n for n in nodes if isinstance(n, Variable) and n not in fed]
    if checkpoint is not None:  # a checkpoint holds the global variables; local ones are here
        values, tables = frozen_values.from_checkpoint(
            checkpoint, [v for v in variables if not v.local])
        values.update(frozen_values.from_session(session, [v for v in variables if v.local])[0])
    else:
        values, tables = frozen_values.from_session(session, variables, near)
    records = graph_io.serialize(nodes, fed, constants)
    meta_graph = {"tags": tags, "nodes": records,
                  "signature_def": {key: _signature_record(s)
                                    for key, s in signature_def_map.items()}}
    return meta_graph, values, tables


def _signature_record(signature):
    def infos(items):
        return {key: {"name": info.name, "dtype": info.dtype.name,
                      "shape": None if info.shape is None else list(info.shape)}
                for key, info in items.items()}
    return {"method_name": signature.method_name, "inputs": infos(signature.inputs),
            "outputs": infos(signature.outputs)}
