"""`Predictor`: in-process predictions from a servable. It is loaded once, with the forward
pass planned once (the pruned graph in topological order, each step's function and the
positions of its inputs), so a request walks no graph; each call keeps its values in a list
of its own, so any number of threads may predict at once."""

import os

import numpy as np

from ..array_ops import RowSource
from ..errors import DataLossError, InvalidArgumentError, NotFoundError, PsflowError
from ..fingerprint import as_bytes_array
from ..graph import Graph, Placeholder
from ..shapes import format_shape
from . import format as servable_format
from . import graph_io, signature_constants, tag_constants
from .loader import import_meta_graph, meta_graph_of


class Predictor:
    """Predictions of one signature of a servable: `predict({input key: array})` returns
    {output key: array}. `signatures` {key: SignatureDef}, `signature` the chosen one,
    `version` (the export folder's number, or None) and `export_dir`."""

    def __init__(self, export_dir, nodes, signatures, signature_key, version=None,
                 variables=()):
        """`variables`: the names of the nodes that hold a frozen Variable's value."""
        self.export_dir = export_dir
        self._nodes = {node.name: node for node in nodes}
        self._variable_names = frozenset(variables)
        self.signatures = signatures
        self.signature_key = signature_key
        self.signature = signatures[signature_key]
        self.version = version
        self._plan()

    @classmethod
    def load(cls, export_dir, tags=(tag_constants.SERVING,),
             signature=signature_constants.DEFAULT_SERVING_SIGNATURE_DEF_KEY):
        """The Predictor of `signature` in the meta graph tagged `tags` of `export_dir`.
        NotFoundError for a missing folder, tag set or signature; DataLossError naming the
        file for a damaged export."""
        servable = servable_format.read(export_dir)
        meta = meta_graph_of(servable, tags)
        nodes, signatures = import_meta_graph(servable, meta, Graph())
        if signature not in signatures:
            raise NotFoundError(f"{export_dir} has no signature {signature!r} for tags "
                                f"{list(meta['tags'])}; its signatures: "
                                f"{', '.join(sorted(signatures)) or 'none'}")
        name = os.path.basename(servable.export_dir)
        return cls(servable.export_dir, nodes, signatures, signature,
                   int(name) if name.isdigit() else None, servable.variables)

    def _plan(self):
        signature, nodes = self.signature, self._nodes
        inputs = {key: nodes[info.name] for key, info in signature.inputs.items()}
        outputs = {key: nodes[info.name] for key, info in signature.outputs.items()}
        order = graph_io.prune(list(outputs.values()) + list(inputs.values()),
                               inputs.values())
        slot = {node: i for i, node in enumerate(order)}
        fed = set(inputs.values())
        template = [None] * len(order)
        steps = []
        self._frozen = {}  # name -> (slot, node) of the Variables and tables the pass reads
        for node in order:
            if node in fed:
                continue
            if isinstance(node, Placeholder):
                raise DataLossError(f"{self.export_dir}: signature {self.signature_key!r} "
                                    f"needs placeholder {node.name!r}, which it does not take")
            if not node.inputs:  # constants and tables: computed once, shared by every call
                template[slot[node]] = node.forward()
                if getattr(node, "is_table", False) or node.name in self._variable_names:
                    self._frozen[node.name] = (slot[node], node)
                continue
            steps.append((slot[node], node, node.forward, tuple(slot[i] for i in node.inputs)))
        self._template = template
        self._steps = steps
        self._inputs = [(key, slot[node], signature.inputs[key])
                        for key, node in inputs.items()]
        self._outputs = [(key, slot[node]) for key, node in outputs.items()]

    def parameters(self):
        """What the forward pass reads that training made: ({Variable name: its value},
        {table name: its row store}), as frozen at export or as `rebind` last set them."""
        template = self._template
        variables, tables = {}, {}
        for name, (position, node) in self._frozen.items():
            if getattr(node, "is_table", False):
                tables[name] = template[position].store
            else:
                variables[name] = template[position]
        return variables, tables

    def rebind(self, variables=None, tables=None):
        """Sets the values of Variables ({name: array of the same shape, cast to its dtype})
        and the row stores of tables ({name: an object with `read_rows(var, keys, train)`,
        as psflow.saved_model.frozen_table.TableRows}) that the forward pass reads, all at
        once: a predict running meanwhile reads all the old ones or all the new ones.
        InvalidArgumentError for a name the pass does not read or a value of another shape;
        then nothing changes."""
        template = list(self._template)
        for name, value in (variables or {}).items():
            position, node = self._parameter(name, table=False)
            value = np.asarray(value, dtype=template[position].dtype)
            if value.shape != np.shape(template[position]):
                raise InvalidArgumentError(
                    f"variable {name!r} has shape {format_shape(np.shape(template[position]))};"
                    f" a value of shape {format_shape(value.shape)} cannot replace it")
            template[position] = value
        for name, store in (tables or {}).items():
            position, node = self._parameter(name, table=True)
            template[position] = RowSource(node, store, False)
        self._template = template  # one assignment: a call copies the old list or the new

    def _parameter(self, name, table):
        found = self._frozen.get(name)
        if found is None or bool(getattr(found[1], "is_table", False)) != table:
            kind = "table" if table else "variable"
            known = sorted(n for n, (_, node) in self._frozen.items()
                           if bool(getattr(node, "is_table", False)) == table)
            raise InvalidArgumentError(f"signature {self.signature_key!r} reads no {kind} "
                                       f"{name!r}; it reads {known}")
        return found

    def predict(self, inputs):
        """{output key: array} for {input key: array-like}; InvalidArgumentError names an
        input that is missing, unknown, of a dtype that cannot be cast safely, or of the
        wrong shape."""
        if not isinstance(inputs, dict):
            raise InvalidArgumentError(f"predict takes a dict {{input key: array}}, got "
                                       f"{type(inputs).__name__}")
        expected = self.signature.inputs
        unknown = sorted(str(k) for k in inputs if k not in expected)
        if unknown:
            raise InvalidArgumentError(
                f"unknown input {', '.join(map(repr, unknown))}; signature "
                f"{self.signature_key!r} takes {', '.join(map(repr, sorted(expected)))}")
        values = list(self._template)
        for key, position, info in self._inputs:
            if key not in inputs:
                raise InvalidArgumentError(f"missing input {key!r} ({info.dtype.name} of shape "
                                           f"{format_shape(info.shape)})")
            values[position] = checked_input(key, inputs[key], info)
        node = None
        try:
            for position, node, forward, args in self._steps:  # noqa: B007 -- named on error
                values[position] = forward(*[values[i] for i in args])
        except PsflowError:
            raise
        except Exception as exc:
            raise InvalidArgumentError(
                f"{type(node).__name__} op {node.name!r} failed: {exc}") from exc
        return {key: _owned(values[position]) for key, position in self._outputs}


def checked_input(key, value, info):
    """`value` as an array of the input's dtype; InvalidArgumentError naming `key` when its
    dtype cannot be cast without loss of kind (or range) or its shape does not fit."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise InvalidArgumentError(f"input {key!r} is not an array: {exc}") from None
    dtype = info.dtype
    if dtype.kind == "S":
        if array.dtype.kind not in "SUO":
            raise InvalidArgumentError(f"input {key!r} has dtype {array.dtype.name}; it takes "
                                       "strings")
        try:
            array = as_bytes_array(array)
        except (TypeError, UnicodeEncodeError) as exc:
            raise InvalidArgumentError(f"input {key!r}: {exc}") from None
    elif array.dtype != dtype:
        kind = array.dtype.kind
        ok = kind in "biuf" and dtype.kind in "biuf" and (
            np.can_cast(array.dtype, dtype, casting="same_kind") or
            (kind in "biu" and dtype.kind in "iuf"))
        if ok and kind in "iu" and dtype.kind in "iu" and array.size:
            limits = np.iinfo(dtype)
            ok = limits.min <= array.min() and array.max() <= limits.max
        if not ok:
            raise InvalidArgumentError(
                f"input {key!r} has dtype {array.dtype.name}, which cannot be cast safely to "
                f"{dtype.name}")
        array = array.astype(dtype)
    shape = info.shape
    if shape is not None and (array.ndim != len(shape) or any(
            d is not None and d != a for d, a in zip(shape, array.shape, strict=True))):
        raise InvalidArgumentError(f"input {key!r} has shape {format_shape(array.shape)}; "
                                   f"the signature wants {format_shape(shape)}")
    return array


def _owned(value):
    """An output the caller may keep and change: a copy when it is read-only or a view."""
    if isinstance(value, np.ndarray) and (value.base is not None or not value.flags.writeable):
        return value.copy()
    return np.asarray(value)


def load(export_dir, tags=(tag_constants.SERVING,),
         signature=signature_constants.DEFAULT_SERVING_SIGNATURE_DEF_KEY):
    """The Predictor of a servable (see Predictor.load)."""
    return Predictor.load(export_dir, tags, signature)
