"""`Dataset.map`: the function is traced once into a graph of its own (as TF1 traces it), on
placeholders shaped like the dataset's elements, and that graph runs on each element."""

import logging

from ..errors import GraphMismatchError
from ..graph import Graph, Placeholder, convert_to_tensor
from ..local_store import LocalVariableStore
from ..session import Session
from .dataset_ops import Dataset, register
from .element_structure import LEAF, flatten, pack, spec_of_node, structure_of
from .line_origins import SkippedRecord, origin_of_element

log = logging.getLogger(__name__)


class MapFunction:
    """`fn` as a graph: `inputs` (placeholders for the element's components) to `outputs`."""

    def __init__(self, fn, structure, specs):
        self.graph = Graph()
        with self.graph.as_default():
            self.inputs = [Placeholder(dtype=s.dtype, shape=s.shape, name=f"arg{k}")
                           for k, s in enumerate(specs)]
            args = pack(structure, self.inputs)
            try:
                result = fn(*args) if isinstance(structure, tuple) else fn(args)
            except GraphMismatchError as exc:
                raise GraphMismatchError(
                    f"a map function builds its ops in a graph of its own and cannot use "
                    f"tensors of the enclosing graph; make them inside the function ({exc})"
                ) from None
            if isinstance(result, list):  # decode_csv's list of columns: a tuple, as in TF
                result = tuple(result)
            self.structure = structure_of(result)
            self.outputs = [convert_to_tensor(c) for c in flatten(result)]
        for node in self.outputs:
            if node.dtype is None:
                raise TypeError(f"a map function returned {node.name!r}, which has no value")
        self.specs = [spec_of_node(n) for n in self.outputs]
        # A store of its own: a map function holds no variables, and is no cluster's session.
        self._session = Session(graph=self.graph, store=LocalVariableStore())
        self._plan = self._session._make_plan(self.outputs, set(self.inputs))

    def __call__(self, values):
        feeds = dict(zip(self.inputs, values, strict=True))
        session, plan = self._session, self._plan
        results = session._execute(plan, session._execute_early(plan, feeds))
        return tuple(results[n] for n in self.outputs)

    def skipped_lines(self):
        """The malformed lines the function's decode_csv ops have skipped."""
        return sum(getattr(n, "skipped_lines", 0) for n in self.graph.nodes)


class MapDataset(Dataset):
    def __init__(self, dataset, map_func):
        if not callable(map_func):
            raise TypeError(f"map: map_func must be callable, got {map_func!r}")
        self.function = MapFunction(map_func, dataset._structure, dataset._specs)
        structure = self.function.structure
        super().__init__(structure if structure is not LEAF else LEAF, self.function.specs,
                         inputs=(dataset,))

    def _elements(self, opening):
        function = self.function
        for values, origin in self._inputs[0]._elements(opening):
            with origin_of_element(origin):
                try:
                    result = function(values)
                except SkippedRecord:
                    continue
            yield result, origin


register("map", MapDataset)


def skip_counters(dataset):
    """The decode_csv ops of the map functions of `dataset`'s pipeline: each counts the
    malformed lines it skipped (`skipped_lines`, `first_skipped`)."""
    counters, pending = [], [dataset]
    while pending:
        d = pending.pop()
        if isinstance(d, MapDataset):
            counters.extend(n for n in d.function.graph.nodes if hasattr(n, "skipped_lines"))
        pending.extend(d._inputs)
    return counters
