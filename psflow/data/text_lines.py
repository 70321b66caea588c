"""`TextLineDataset`: the lines of text files (plain, gzip or zlib), each an `S` string without
its line ending, read a block at a time and cut into lines with numpy; each line keeps its
file and line number (its origin) for the ops that reject it."""

import gzip
import os
import zlib

import numpy as np

from ..csv_parse import strings_at
from ..errors import NotFoundError
from ..graph import Constant, Node
from .dataset_ops import Dataset
from .element_structure import LEAF, Spec, as_component
from .line_origins import Origin

BLOCK_BYTES = 1 << 20
_COMPRESSIONS = (None, "", "GZIP", "ZLIB")


class TextLineDataset(Dataset):
    """The lines of `filenames` (a file name, a list of them, or a string tensor), file after
    file; `compression_type` is None or "" (plain text), "GZIP" or "ZLIB"."""

    def __init__(self, filenames, compression_type=None, buffer_size=None,
                 num_parallel_reads=None):
        if isinstance(compression_type, Node):
            compression_type = compression_type.value.item().decode()
        if compression_type not in _COMPRESSIONS:
            raise ValueError(f"TextLineDataset: compression_type must be None, '', 'GZIP' or "
                             f"'ZLIB', got {compression_type!r}")
        self._compression = compression_type or None
        if isinstance(filenames, (str, bytes, os.PathLike)):
            filenames = [os.fsencode(filenames)]
        elif isinstance(filenames, (list, tuple)):
            filenames = [os.fsencode(f) for f in filenames]
        self._filenames = as_component(filenames, "TextLineDataset")
        if self._filenames.dtype is not None and self._filenames.dtype.kind != "S":
            raise TypeError(f"TextLineDataset: filenames must be strings, got dtype "
                            f"{self._filenames.dtype.name}")
        captures = [self._filenames] if isinstance(self._filenames, Node) and not isinstance(
            self._filenames, Constant) else []
        super().__init__(LEAF, [Spec("S", ())], captures=captures)

    def _chunked(self):
        return True

    def _chunks(self, opening):
        names = self._filenames
        if isinstance(names, Node):
            names = opening.value(names)
        files = tuple(os.fsdecode(bytes(n)) for n in np.asarray(names).reshape(-1))
        for file_id, name in enumerate(files):
            yield from self._read(name, file_id, files)

    def _read(self, name, file_id, files):
        try:
            if self._compression == "GZIP":
                stream = gzip.open(name, "rb")
            else:
                stream = open(name, "rb")  # noqa: SIM115 -- closed below
        except FileNotFoundError:
            raise NotFoundError(f"TextLineDataset: {name}: no such file") from None
        inflate = zlib.decompressobj() if self._compression == "ZLIB" else None
        line = 1
        rest = b""
        with stream:
            while True:
                try:
                    block = stream.read(BLOCK_BYTES)
                    if inflate is not None:
                        block = inflate.decompress(block) if block else inflate.flush()
                except (OSError, EOFError, zlib.error) as exc:
                    raise NotFoundError(f"TextLineDataset: {name}: cannot read it as "
                                        f"{self._compression or 'text'} ({exc})") from None
                if not block:
                    break
                block = rest + block
                end = block.rfind(b"\n") + 1
                rest = block[end:]
                if end:
                    lines = _lines(np.frombuffer(block, dtype=np.uint8, count=end))
                    yield (lines,), Origin(files, np.full(len(lines), file_id),
                                           np.arange(line, line + len(lines)))
                    line += len(lines)
        if rest:  # a last line without a line ending
            lines = _lines(np.frombuffer(rest + b"\n", dtype=np.uint8))
            yield (lines,), Origin(files, [file_id], [line])


def _lines(data):
    """The lines of `data` (uint8, ending with a newline) as an `S` array, without "\\n" or
    "\\r\\n"."""
    ends = np.flatnonzero(data == 10)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    carriage = (ends > starts) & (data[ends - 1] == 13)
    return strings_at(data, starts, ends - starts - carriage)
