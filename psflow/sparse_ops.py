"""Sparse tensors, TF1 style: `SparseTensor(indices, values, dense_shape)` (COO: int64
indices of shape (nnz, rank), values (nnz,), the dense shape), `sparse_placeholder`, and
`nn.embedding_lookup_sparse` for multi-hot features: each row of a 2-D sparse id tensor
combines the embeddings of its ids ("sum", "mean" or "sqrtn", optionally weighted)."""

import collections

import numpy as np

from .dtypes import float32, int64
from .embedding_ops import embedding_lookup
from .gradient_registry import register_gradient
from .graph import Node, convert_to_tensor, placeholder

COMBINERS = ("sum", "mean", "sqrtn")

SparseTensorValue = collections.namedtuple("SparseTensorValue", "indices values dense_shape")


class SparseTensor:
    """Three graph tensors: `indices` (int64, (nnz, rank)), `values` ((nnz,)) and
    `dense_shape` (int64, (rank,)). Feed a sparse_placeholder a SparseTensorValue (or any
    (indices, values, dense_shape) triple)."""

    def __init__(self, indices, values, dense_shape):
        self.indices = convert_to_tensor(indices, dtype=int64)
        self.values = convert_to_tensor(values)
        self.dense_shape = convert_to_tensor(dense_shape, dtype=int64)

    @property
    def dtype(self):
        return self.values.dtype

    def feeds(self, value):
        """{placeholder: array} for feeding `value` (a SparseTensorValue or a triple)."""
        indices, values, dense_shape = value
        indices = np.asarray(indices, dtype=np.int64)
        values = np.asarray(values)
        if indices.ndim != 2 or values.ndim != 1 or len(indices) != len(values):
            raise ValueError(f"a sparse value needs indices of shape (nnz, rank) and values of "
                             f"shape (nnz,), got {indices.shape} and {values.shape}")
        return {self.indices: indices, self.values: values,
                self.dense_shape: np.asarray(dense_shape, dtype=np.int64)}


def sparse_placeholder(dtype=float32, shape=None, name=None):
    """A SparseTensor of three placeholders, fed together (see SparseTensor.feeds)."""
    name = name or "sparse"
    rank = len(shape) if shape is not None else None
    return SparseTensor(placeholder(int64, (None, rank), name=f"{name}/indices"),
                        placeholder(dtype, (None,), name=f"{name}/values"),
                        placeholder(int64, (rank,), name=f"{name}/shape"))


class SparseCombine(Node):
    """Row r of the result combines the embeddings whose entry has row index r: their
    (weighted) sum, divided by the sum of the weights ("mean") or the square root of the sum
    of their squares ("sqrtn"). Rows without entries are zero."""

    def __init__(self, embeddings, rows, weights, dense_shape, combiner):
        self.combiner = combiner
        self.weighted = weights is not None
        inputs = (embeddings, rows, dense_shape) + ((weights,) if self.weighted else ())
        shape = None if embeddings.shape is None else (None,) + tuple(embeddings.shape[1:])
        super().__init__(inputs, shape=shape, dtype=embeddings.dtype)

    def scales(self, rows, weights, count, dtype):
        """Each entry's factor: its weight over its row's denominator; None when every factor
        is 1 (an unweighted sum, or no row with more than one entry)."""
        if weights is None and (self.combiner == "sum" or _one_per_row(rows, count)):
            return None
        weights = np.ones(len(rows), dtype) if weights is None else weights.astype(dtype)
        if self.combiner == "sum":
            return weights
        totals = np.bincount(rows, weights if self.combiner == "mean" else weights * weights,
                             minlength=count).astype(dtype)
        if self.combiner == "sqrtn":
            totals = np.sqrt(totals)
        return weights / np.where(totals == 0, 1, totals)[rows]

    def forward(self, embeddings, rows, dense_shape, weights=None):
        count = int(dense_shape[0])
        factors = self.scales(rows, weights, count, embeddings.dtype)
        if factors is not None:
            embeddings = embeddings * factors.reshape((-1,) + (1,) * (embeddings.ndim - 1))
        return segment_sum(embeddings, rows, count)


def _one_per_row(rows, count):
    """Whether no row index repeats (checked once per run for a batch of rows)."""
    return len(rows) <= count and (len(rows) < 2 or np.bincount(rows, minlength=count).max() <= 1)


def segment_sum(values, rows, count):
    """(count, ...) whose row r is the sum of `values` whose row index is r: a scatter when no
    index repeats, else one sum per run of equal indices after a stable sort (no np.add.at,
    whose per-element loop is the slow part of a combine)."""
    out = np.zeros((count,) + values.shape[1:], dtype=values.dtype)
    if len(rows) == 0:
        return out
    if np.all(rows[1:] > rows[:-1]) or _one_per_row(rows, count):
        out[rows] = values
        return out
    order = None if np.all(rows[1:] >= rows[:-1]) else np.argsort(rows, kind="stable")
    if order is not None:
        rows, values = rows[order], values[order]
    starts = np.flatnonzero(np.concatenate(([True], rows[1:] != rows[:-1])))
    out[rows[starts]] = np.add.reduceat(values, starts, axis=0)
    return out


class SparseCombineGrad(Node):
    def __init__(self, grad, op):
        self.op = op
        super().__init__((grad,) + op.inputs[1:], shape=op.inputs[0].shape,
                         dtype=op.inputs[0].dtype)

    def forward(self, grad, rows, dense_shape, weights=None):
        factors = self.op.scales(rows, weights, int(dense_shape[0]), grad.dtype)
        picked = grad[rows]
        if factors is None:
            return picked
        return picked * factors.reshape((-1,) + (1,) * (grad.ndim - 1))


@register_gradient(SparseCombine)
def _sparse_combine_grad(op, grad):
    return [SparseCombineGrad(grad, op)] + [None] * (len(op.inputs) - 1)


class _Column(Node):
    """Column `k` of a 2-D integer array (the row index of each sparse entry)."""

    def __init__(self, x, k):
        self.k = k
        super().__init__((x,), shape=(None,), dtype=np.dtype(np.int64))

    def forward(self, x):
        return np.asarray(x)[:, self.k]


def embedding_lookup_sparse(params, sp_ids, sp_weights, partition_strategy="mod", name=None,
                            combiner="mean", max_norm=None):
    """TF1's tf.nn.embedding_lookup_sparse: for a 2-D SparseTensor of ids (batch, ids per
    example), the (batch, dim) combination of each example's embeddings. `sp_weights`: a
    SparseTensor of the same indices with a weight per id, or None (all 1)."""
    if combiner not in COMBINERS:
        raise ValueError(f"embedding_lookup_sparse: unknown combiner {combiner!r}; one of "
                         f"{', '.join(COMBINERS)}")
    if not isinstance(sp_ids, SparseTensor) or (
            sp_weights is not None and not isinstance(sp_weights, SparseTensor)):
        raise TypeError("embedding_lookup_sparse: sp_ids (and sp_weights, when given) must be "
                        "SparseTensors")
    embeddings = embedding_lookup(params, sp_ids.values, partition_strategy=partition_strategy,
                                  max_norm=max_norm)
    weights = None if sp_weights is None else sp_weights.values
    return SparseCombine(embeddings, _Column(sp_ids.indices, 0), weights, sp_ids.dense_shape,
                         combiner)
