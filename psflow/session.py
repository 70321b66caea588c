"""`Session`: runs parts of a graph. A run computes only what its fetches need, each node once,
in one topological order; the order is planned once per (fetches, fed nodes) and reused."""

import atexit
import logging
import operator
import os
import sys

import numpy as np

from .array_ops import Gather, RowSource
from .errors import InvalidArgumentError, PsflowError
from .fingerprint import as_bytes_array
from .graph import (
    Graph,
    Node,
    Placeholder,
    default_session,
    get_default_graph,
    get_default_session,
    topological_order,
)
from .local_store import LocalVariableStore
from .shapes import format_shape, shape_compatible
from .sparse_ops import SparseTensor
from .variable_store import VariableStore
from .variables import Variable

log = logging.getLogger(__name__)


class _Plan:
    """The steps of one kind of run: (node, function, input nodes) in topological order.

    `calls` holds the same steps ready to run: (node, function, getter, arity), where
    `getter(values)` picks the input values (the value itself when arity is 1).
    """

    __slots__ = ("steps", "variables", "lookups", "fed_lookups", "computed_lookups",
                 "early_calls", "calls")

    def __init__(self, steps, variables, lookups=(), fed_lookups=(), computed_lookups=(),
                 early=frozenset()):
        self.steps = steps
        self.variables = variables  # read whole
        self.lookups = list(lookups)  # read only through gather, row by row
        # (variable, fed node) of the lookups whose ids are fed: known before the run starts
        self.fed_lookups = list(fed_lookups)
        # (variable, node) of the lookups whose ids are computed from feeds alone (hashed
        # strings, an iterator's element): the `early` steps compute them first, so that a
        # distributed session pulls every lookup's rows at once before the rest of the run.
        self.computed_lookups = list(computed_lookups)
        self.early_calls = [_call(step) for step in steps if step[0] in early]
        self.calls = [_call(step) for step in steps if step[0] not in early]


def _call(step):
    node, fn, inputs = step
    return node, fn, operator.itemgetter(*inputs) if inputs else None, len(inputs)


# What a Session needs of psflow.train, which registers it when imported (register_cluster),
# so that this module imports nothing above it.
_open_cluster_session = None
_names_a_worker = None


def register_cluster(open_session, names_a_worker):
    """Sets how sessions reach a cluster: `open_session(target, graph)` is what
    `Session(target)` returns for a non-empty target (a session on the cluster of that
    tf.train.Server); `names_a_worker()` tells whether TF_CONFIG makes this process a worker of
    a cluster with parameter servers (a plain Session then warns that it trains alone)."""
    global _open_cluster_session, _names_a_worker
    _open_cluster_session, _names_a_worker = open_session, names_a_worker


class _SessionType(type):
    """`Session(server.target)` is a session on the cluster of that tf.train.Server."""

    def __call__(cls, *args, **kwargs):
        if cls is Session:
            target = args[0] if args else kwargs.get("target", "")
            if isinstance(target, str) and target and _open_cluster_session is not None:
                graph = args[1] if len(args) > 1 else kwargs.get("graph")
                return _open_cluster_session(target, graph)
        return super().__call__(*args, **kwargs)


class Session(metaclass=_SessionType):
    """Runs graph nodes: `sess.run(fetches, feed_dict)`.

    `fetches` is a node, a node's name, or a list, tuple or dict of them (nested as you like);
    the result has the same structure with numpy arrays in place of nodes (None for ops that
    have no value, such as a train op).
    """

    def __init__(self, target="", graph=None, config=None, store: VariableStore | None = None):
        if isinstance(target, Graph):  # Session(graph): psflow's older positional form
            target, graph = "", target
        if target:
            raise ValueError(f"{type(self).__name__} takes no target ({target!r}); "
                             "tf.Session(server.target) trains on a tf.train.Server's cluster")
        if store is None:
            _warn_if_alone_in_a_cluster()
        self.graph = graph or get_default_graph()
        self.config = config  # ConfigProto: accepted, and nothing in it applies
        self.store = store or LocalVariableStore()
        # Local variables stay in this process whatever holds the others.
        self.local_store = self.store if store is None else LocalVariableStore()
        self._plans: dict[tuple, _Plan] = {}
        self._closed = False
        self._default_context = None

    def store_for(self, var):
        """The store that holds `var`: this process's for a local variable."""
        return self.local_store if var.local else self.store

    # -- running ---------------------------------------------------------------------------
    def run(self, fetches, feed_dict=None):
        if self._closed:
            raise RuntimeError("attempted to use a closed Session")
        flat = []
        structure = self._flatten(fetches, flat)
        feeds = self._convert_feeds(feed_dict) if feed_dict else {}
        key = (tuple(flat), frozenset(feeds))
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._make_plan(flat, feeds)
        # A local store keeps a per-run cache of deduplicated ids; a DistributedSession begins
        # its runs itself (DistributedStore.begin_run), retries included.
        start_run = getattr(self.store, "start_run", None)
        if start_run is not None:
            start_run()
        values = self._execute(plan, self._execute_early(plan, feeds))
        results = [_fetched(node, values[node]) for node in flat]
        return _rebuild(structure, iter(results))

    def _execute_early(self, plan, feeds):
        """The feeds with the values of the plan's early steps (the ids of the lookups that
        depend on feeds alone) added."""
        if not plan.early_calls:
            return feeds
        return self._run_calls(plan.early_calls, dict(feeds))

    def _execute(self, plan, feeds):
        """The values of the plan's steps after the early ones, `feeds` holding those."""
        return self._run_calls(plan.calls, dict(feeds))

    @staticmethod
    def _run_calls(calls, values):
        node = None
        try:
            for node, fn, getter, arity in calls:
                if arity == 1:
                    values[node] = fn(getter(values))
                elif arity:
                    values[node] = fn(*getter(values))
                else:
                    values[node] = fn()
        except PsflowError:
            raise
        except Exception as exc:
            raise InvalidArgumentError(
                f"{type(node).__name__} op {node.name!r} failed: {exc}") from exc
        return values

    def _make_plan(self, fetches, feeds):
        order = topological_order(fetches, stop_at=feeds)
        steps = []
        for node in order:
            if node in feeds:
                continue
            if isinstance(node, Placeholder):
                raise InvalidArgumentError(
                    f"you must feed a value for placeholder {node.name!r} with dtype "
                    f"{node.dtype.name} and shape {format_shape(node.shape)}")
            steps.append((node, node.executor(self), node.inputs))
        variables = [n for n in order if isinstance(n, Variable) and n not in feeds
                     and not n.local]
        # A variable that the run reads only as the table of lookups is read row by row.
        lookups = [v for v in variables if not any(v is f for f in fetches)
                   and _only_looked_up(v, order)]
        tables = [v for v in variables if v.is_table and v not in lookups]
        if tables:
            raise InvalidArgumentError(
                f"embedding table {tables[0].name!r} is read other than by lookups; a table "
                "has no fixed rows to read whole: use nn.embedding_lookup or "
                "nn.embedding_lookup_sparse (and psflow.load_model for its exported rows)")
        if lookups:
            store = self.store
            trains = any(getattr(node, "is_train_op", False) for node in order)
            steps = [(node, (lambda v=node: RowSource(v, store, trains)) if node in lookups
                      else fn, inputs) for node, fn, inputs in steps]
            variables = [v for v in variables if v not in lookups]
        gathers = [node for node in order if isinstance(node, Gather)
                   and node.inputs[0] in lookups]
        fed_lookups = [(g.inputs[0], g.inputs[1]) for g in gathers if g.inputs[1] in feeds]
        computed_lookups, early = [], set()
        for g in gathers:
            if g.inputs[1] in feeds:
                continue
            needs = [n for n in topological_order([g.inputs[1]], stop_at=feeds)
                     if n not in feeds]
            if not any(isinstance(n, Variable) for n in needs):  # no value read from a store
                computed_lookups.append((g.inputs[0], g.inputs[1]))
                early.update(needs)
        return _Plan(steps, variables, lookups, fed_lookups, computed_lookups, early)

    # -- fetches and feeds -----------------------------------------------------------------
    def _resolve(self, fetch):
        if isinstance(fetch, str):
            name = fetch[:-2] if fetch.endswith(":0") else fetch
            try:
                return self.graph.get_node_by_name(name)
            except KeyError:
                raise ValueError(f"cannot fetch {fetch!r}: no node of that name") from None
        if not isinstance(fetch, Node):
            raise TypeError(f"cannot fetch {fetch!r}: fetches must be graph nodes (or lists, "
                            "tuples and dicts of them)")
        if fetch.graph is not self.graph:
            raise ValueError(f"cannot fetch {fetch.name!r}: it belongs to another graph than "
                             "this session's")
        return fetch

    def _flatten(self, fetches, flat):
        """Appends the nodes of `fetches` to `flat`; returns a description of the structure."""
        if isinstance(fetches, dict):
            return (dict, [(k, self._flatten(v, flat)) for k, v in fetches.items()])
        if isinstance(fetches, (list, tuple)):
            return (type(fetches), [self._flatten(v, flat) for v in fetches])
        flat.append(self._resolve(fetches))
        return None

    def _convert_feeds(self, feed_dict):
        feeds = {}
        for key, value in feed_dict.items():
            if isinstance(key, SparseTensor):  # one feed for its three placeholders
                for node, part in key.feeds(value).items():
                    feeds[self._resolve(node)] = _check_feed(node, part)
                continue
            node = self._resolve(key)
            feeds[node] = _check_feed(node, value)
        return feeds

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, checkpoint_dir, variables, global_step, max_to_keep=5,
                        full_every=None):
        """Writes a checkpoint of `variables` and the `global_step` Variable through the
        session's store (one in `full_every` with every table row, the others with the rows
        changed since, see psflow.checkpoint_chain); returns its directory (see
        psflow.checkpoint)."""
        return self.store.save(checkpoint_dir, variables, global_step, max_to_keep, full_every)

    # -- lifetime ----------------------------------------------------------------------------
    def close(self):
        self._closed = True
        self._plans.clear()

    def finish(self, done=True):
        """Ends the session; `done` says whether its work finished normally (a distributed
        session then tells the parameter servers that this worker is done)."""
        self.close()

    def as_default(self):
        return default_session(self)

    def __enter__(self):
        self._default_context = self.as_default()
        self._default_context.__enter__()
        return self

    def __exit__(self, *exc_info):
        self._default_context.__exit__(*exc_info)
        self.close()
        return False


_warned_alone = False


def _warn_if_alone_in_a_cluster():
    """A plain Session in a worker of a cluster (TF_CONFIG) trains alone, in this process:
    say so once, naming what trains on the cluster."""
    global _warned_alone
    if _warned_alone or "TF_CONFIG" not in os.environ or _names_a_worker is None:
        return
    if _names_a_worker():
        _warned_alone = True
        log.warning("tf.Session() trains in this process only, not on the cluster TF_CONFIG "
                    "names; use tf.train.MonitoredTrainingSession, or tf.Session(server.target) "
                    "with a tf.train.Server, to train on its parameter servers")


_uncaught: list[type] = []


def at_exit(callback):
    """Calls callback(failed) when the process exits; `failed` tells whether an uncaught
    exception ended the script. For sessions a TF1 script never closes."""
    if not getattr(sys.excepthook, "psflow_watch", False):
        previous = sys.excepthook

        def hook(exc_type, exc, tb):
            _uncaught.append(exc_type)
            previous(exc_type, exc, tb)
        hook.psflow_watch = True
        sys.excepthook = hook
    atexit.register(lambda: callback(bool(_uncaught)))


def _only_looked_up(var, order):
    """Whether every node of `order` that uses `var` is a gather whose table it is."""
    users = [n for n in order if any(i is var for i in n.inputs)]
    return bool(users) and all(isinstance(n, Gather) and n.inputs[0] is var and
                               n.inputs[1] is not var for n in users)


def _check_feed(node, value):
    """The fed value as an array of the node's dtype; a clear error if it does not fit."""
    array = np.asarray(value)
    dtype = node.dtype
    if dtype is not None and dtype.kind == "S":
        if array.dtype.kind not in "SUO":
            raise InvalidArgumentError(
                f"cannot feed a value of dtype {array.dtype.name} to {node.name!r}, which "
                "holds strings")
        array = as_bytes_array(array)  # str or object arrays become bytes once, here
    elif dtype is not None and array.dtype != dtype:
        ok = np.can_cast(array.dtype, dtype, casting="same_kind") or (
            array.dtype.kind in "biu" and dtype.kind in "iuf")
        if not ok:
            raise InvalidArgumentError(
                f"cannot feed a value of dtype {array.dtype.name} and shape "
                f"{format_shape(array.shape)} to {node.name!r}, which has dtype {dtype.name} "
                f"and shape {format_shape(node.shape)}")
        array = array.astype(dtype)
    if not shape_compatible(node.shape, array.shape):
        raise InvalidArgumentError(
            f"cannot feed a value of shape {format_shape(array.shape)} to {node.name!r}, "
            f"which has shape {format_shape(node.shape)}")
    return array


def _fetched(node, value):
    """What run() returns for a node: a copy where the value may alias a variable's storage
    (which later steps update in place) or a read-only constant."""
    if isinstance(value, np.ndarray) and (
            value.base is not None or not value.flags.writeable or isinstance(node, Variable)):
        return value.copy()
    return value


def _rebuild(structure, results):
    if structure is None:
        return next(results)
    kind, items = structure
    if kind is dict:
        return {k: _rebuild(s, results) for k, s in items}
    values = [_rebuild(s, results) for s in items]
    if kind is list:
        return values
    if kind is tuple:
        return tuple(values)
    return kind(*values)  # a namedtuple


class InteractiveSession(Session):
    """A Session that makes itself the default session until it is closed (for shells and
    notebooks: `x.eval()` without a `with` block)."""

    def __init__(self, target="", graph=None, config=None):
        super().__init__(target, graph, config)
        self._default_context = self.as_default()
        self._default_context.__enter__()

    def close(self):
        if self._default_context is not None and get_default_session() is self:
            self._default_context.__exit__(None, None, None)
        self._default_context = None
        super().close()
