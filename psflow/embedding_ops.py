"""`nn.embedding_lookup`: rows of a table by id, from one Variable or from a list of them (a
table sharded by hand, TF1's "mod" and "div" strategies). A table read only this way is
pulled row by row on a cluster (see array_ops.RowSource)."""

import numpy as np

from .array_ops import gather
from .errors import InvalidArgumentError
from .gradient_registry import register_gradient
from .graph import Node, convert_to_tensor

STRATEGIES = ("mod", "div")


def _assign(ids, sizes, strategy):
    """(the shard of each id, its row there) for a table split into parts of `sizes` rows."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    count, total = len(sizes), sum(sizes)
    if ids.size and (ids.min() < 0 or ids.max() >= total):
        bad = ids[(ids < 0) | (ids >= total)][0]
        raise InvalidArgumentError(f"embedding_lookup: id {bad} is out of range; the "
                                   f"{count} tables hold {total} rows")
    if strategy == "mod":
        return ids % count, ids // count
    per, extras = total // count, total % count  # TF1's "div": the first `extras` get one more
    shard = np.maximum(ids // (per + 1), (ids - extras) // max(per, 1))
    row = np.where(shard < extras, ids % (per + 1), (ids - extras) % max(per, 1))
    return shard, row


class ShardRows(Node):
    """The rows of shard `shard` that `ids` asks for (`positions`: False), or where in the
    flattened ids they go (`positions`: True). Integer bookkeeping: no gradient."""

    def __init__(self, ids, sizes, strategy, shard, positions):
        self.sizes, self.strategy, self.shard, self.positions = sizes, strategy, shard, positions
        super().__init__((ids,), shape=(None,), dtype=np.dtype(np.int64))

    def forward(self, ids):
        shard, row = _assign(ids, self.sizes, self.strategy)
        mine = shard == self.shard
        return np.flatnonzero(mine) if self.positions else row[mine]


class Stitch(Node):
    """Puts each shard's looked-up rows back where their ids were: shape ids.shape + row."""

    def __init__(self, ids, positions, pieces, row_shape, dtype):
        self.count, self.row_shape = len(pieces), tuple(row_shape)
        shape = None if ids.shape is None else tuple(ids.shape) + self.row_shape
        super().__init__((ids, *positions, *pieces), shape=shape, dtype=dtype)

    def forward(self, ids, *rest):
        positions, pieces = rest[:self.count], rest[self.count:]
        ids = np.asarray(ids)
        out = np.empty((ids.size,) + self.row_shape, dtype=pieces[0].dtype)
        for where, rows in zip(positions, pieces, strict=False):
            out[where] = rows
        return out.reshape(ids.shape + self.row_shape)


class StitchGrad(Node):
    """The part of the stitched gradient that goes to one shard's rows."""

    def __init__(self, grad, positions, row_shape):
        self.row_shape = tuple(row_shape)
        super().__init__((grad, positions), shape=(None,) + self.row_shape, dtype=grad.dtype)

    def forward(self, grad, positions):
        return np.reshape(grad, (-1,) + self.row_shape)[positions]


@register_gradient(Stitch)
def _stitch_grad(op, grad):
    count = op.count
    positions = op.inputs[1:1 + count]
    return [None] * (1 + count) + [StitchGrad(grad, p, op.row_shape) for p in positions]


class ClipRowsByNorm(Node):
    """Each row (last axis) scaled down to an L2 norm of at most `max_norm`."""

    def __init__(self, x, max_norm):
        self.max_norm = float(max_norm)
        super().__init__((x,), shape=x.shape, dtype=x.dtype)

    def scale(self, x):
        norm = np.sqrt(np.sum(x * x, axis=-1, keepdims=True))
        return np.minimum(1.0, self.max_norm / np.maximum(norm, 1e-30)), norm

    def forward(self, x):
        return x * self.scale(x)[0]


class ClipRowsByNormGrad(Node):
    def __init__(self, grad, x, op):
        self.op = op
        super().__init__((grad, x), shape=x.shape, dtype=x.dtype)

    def forward(self, grad, x):
        scale, norm = self.op.scale(x)
        clipped = scale < 1.0
        # d(m x / |x|) = m / |x| (g - x (x . g) / |x|^2) where the row was clipped.
        along = x * np.sum(x * grad, axis=-1, keepdims=True) / np.maximum(norm * norm, 1e-30)
        return np.where(clipped, scale * (grad - along), grad)


@register_gradient(ClipRowsByNorm)
def _clip_rows_grad(op, grad):
    return [ClipRowsByNormGrad(grad, op.inputs[0], op)]


def embedding_lookup(params, ids, partition_strategy="mod", name=None, validate_indices=True,
                     max_norm=None):
    """The rows of `params` picked by `ids` (shape ids.shape + row shape), as TF1's
    tf.nn.embedding_lookup. `params` is a Variable (or tensor), or a list of them holding the
    table's rows by `partition_strategy`: "mod" (id i in table i % n, row i // n) or "div"
    (contiguous ranges, the first tables one row longer when the rows do not divide evenly).
    `max_norm`: each looked-up row is scaled down to at most this L2 norm."""
    if partition_strategy not in STRATEGIES:
        raise ValueError(f"embedding_lookup: unknown partition_strategy "
                         f"{partition_strategy!r}; one of {', '.join(STRATEGIES)}")
    tables = list(params) if isinstance(params, (list, tuple)) else [params]
    if not tables:
        raise ValueError("embedding_lookup: params is an empty list")
    if len(tables) == 1:
        result = gather(tables[0], ids, name=name)
    else:
        tables = [convert_to_tensor(t) for t in tables]
        shapes = [t.shape for t in tables]
        if any(s is None or None in s for s in shapes) or \
                len({tuple(s[1:]) for s in shapes}) != 1:
            raise ValueError(f"embedding_lookup: the tables need known shapes with the same "
                             f"row shape, got {shapes}")
        ids = convert_to_tensor(ids)
        sizes = [int(s[0]) for s in shapes]
        positions = [ShardRows(ids, sizes, partition_strategy, k, True)
                     for k in range(len(tables))]
        pieces = [gather(table, ShardRows(ids, sizes, partition_strategy, k, False))
                  for k, table in enumerate(tables)]
        result = Stitch(ids, positions, pieces, shapes[0][1:], tables[0].dtype)
    return result if max_norm is None else ClipRowsByNorm(result, max_norm)
