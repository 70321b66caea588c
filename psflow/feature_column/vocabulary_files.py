"""Vocabulary files: one value per line, UTF-8; read once when the column is made, so the
vocabulary is part of the graph (and of an exported model), not a file it needs later."""

import numpy as np


def read_vocabulary(path, size, dtype, where):
    """The first `size` values (all when None) of vocabulary file `path`, as a list of bytes
    (or ints for an integer dtype). ValueError naming the file and the line for an empty
    line, a repeated value or a line that is not an integer; FileNotFoundError naming it."""
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except OSError as exc:
        raise FileNotFoundError(f"{where}: cannot read vocabulary file {path!r}: "
                                f"{exc.strerror or exc}") from None
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    if size is not None:
        if int(size) < 1:
            raise ValueError(f"{where}: vocabulary_size must be positive, got {size}")
        if int(size) > len(lines):
            raise ValueError(f"{where}: vocabulary_size is {size} but {path} has "
                             f"{len(lines)} lines")
        lines = lines[:int(size)]
    values, seen = [], {}
    for number, line in enumerate(lines, start=1):
        value = line[:-1] if line.endswith(b"\r") else line
        if not value:
            raise ValueError(f"{where}: {path}, line {number}: empty line in the vocabulary")
        if np.dtype(dtype).kind in "iu":
            try:
                value = int(value)
            except ValueError:
                raise ValueError(f"{where}: {path}, line {number}: {value!r:.40} is not an "
                                 "integer") from None
        else:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{where}: {path}, line {number}: not UTF-8 text") from None
        if value in seen:
            raise ValueError(f"{where}: {path}, line {number}: {value!r:.40} repeats line "
                             f"{seen[value]}")
        seen[value] = number
        values.append(value)
    if not values:
        raise ValueError(f"{where}: vocabulary file {path} is empty")
    return values
