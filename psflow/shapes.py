"""Static shapes: tuples of ints with None for unknown dimensions (None for an unknown rank),
how TensorFlow prints them, and broadcasting them."""

import numpy as np


def as_shape(shape):
    """Returns `shape` as a tuple of ints and Nones, or None for a shape of unknown rank."""
    if shape is None:
        return None
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    try:
        dims = tuple(shape)
    except TypeError as exc:
        raise TypeError(f"{shape!r} is not a shape: expected a list of ints or None") from exc
    for dim in dims:
        if dim is not None and not (isinstance(dim, (int, np.integer)) and dim >= 0):
            raise ValueError(f"{shape!r} is not a shape: dimension {dim!r} is not a "
                             "non-negative int or None")
    return tuple(None if d is None else int(d) for d in dims)


def format_shape(shape):
    """Formats a static shape the way TensorFlow prints it: `(?, 64)`."""
    if shape is None:
        return "<unknown>"
    inner = ", ".join("?" if d is None else str(d) for d in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def shape_compatible(static, actual):
    """True if the concrete shape `actual` fits the partially known shape `static`."""
    if static is None:
        return True
    if len(static) != len(actual):
        return False
    return all(s is None or s == a for s, a in zip(static, actual, strict=True))



class TensorShape(tuple):
    """A static shape: a tuple of ints and Nones, with TF1's TensorShape methods."""

    def as_list(self):
        return list(self)

    @property
    def ndims(self):
        return len(self)

    @property
    def dims(self):
        return list(self)

    def num_elements(self):
        return None if None in self else int(np.prod(self, dtype=np.int64))

    def is_fully_defined(self):
        return None not in self

    def __repr__(self):
        return f"TensorShape({list(self)})"



def broadcast_static(a, b):
    """The static shape of broadcasting shapes `a` and `b` (None where unknown)."""
    if a is None or b is None:
        return None
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        da = a[-i] if i <= len(a) else 1
        db = b[-i] if i <= len(b) else 1
        if da == 1:
            out.append(db)
        elif db == 1:
            out.append(da)
        elif da is None or db is None:
            out.append(da if db is None else db)
        elif da != db:
            raise ValueError(f"shapes {format_shape(a)} and {format_shape(b)} cannot be "
                             "broadcast together")
        else:
            out.append(da)
    return tuple(reversed(out))
