"""FarmHash's Fingerprint64 (`farmhashna::Hash64`, the function TensorFlow's
`string_to_hash_bucket_fast` and `sparse_cross_hashed` use), vectorized over numpy arrays of
byte strings, and `fingerprint_cat64`, TensorFlow's combination of two fingerprints.

The same bytes give the same 64 bits in every process, on every machine and under every
Python: nothing here is seeded or salted. Each step runs on a whole array at once: strings
are grouped by FarmHash's length classes (0-16, 17-32, 33-64 and longer bytes), and the
8-byte words a class reads are gathered at each string's own offsets from one padded copy of
the array, so a batch costs a few dozen numpy passes, never a Python call per string.

A numpy `S` array drops trailing NUL bytes (b"a\\x00" is stored as b"a"): such a string is
hashed without them.
"""

import numpy as np

_U64 = np.uint64
K0 = _U64(0xC3A5C85C97CB3127)
K1 = _U64(0xB492B66FBE98F273)
K2 = _U64(0x9AE16A3B2F90404F)
_CAT_MUL = _U64(0xC6A4A7935BD1E995)


def _rotate(value, shift):
    """Rotation to the right by a constant number of bits, as FarmHash's Rotate64."""
    return (value >> _U64(shift)) | (value << _U64(64 - shift))


def _shift_mix(value):
    return value ^ (value >> _U64(47))


def _hash_len16(u, v, mul):
    a = _shift_mix((u ^ v) * mul)
    b = _shift_mix((v ^ a) * mul)
    return b * mul


def as_bytes_array(values):
    """`values` as a numpy array of fixed-width byte strings (`S<width>`): an `S` array is
    returned as it is; str (UTF-8 encoded) and object arrays are converted once."""
    array = np.asarray(values)
    if array.dtype.kind == "S":
        return array
    if array.dtype.kind == "U":
        return np.char.encode(array, "utf-8")
    if array.dtype.kind == "O":
        flat = [v.encode("utf-8") if isinstance(v, str) else v for v in array.reshape(-1)]
        if not all(isinstance(v, bytes) for v in flat):
            bad = next(v for v in flat if not isinstance(v, bytes))
            raise TypeError(f"expected strings, got {type(bad).__name__} {bad!r:.40}")
        return np.array(flat, dtype=np.bytes_).reshape(array.shape) if flat else \
            np.zeros(array.shape, dtype="S1")
    raise TypeError(f"expected an array of strings, got dtype {array.dtype.name}")


class _Words:
    """Little-endian 8-byte words of each string at any byte offset: the strings' bytes are
    copied once into rows padded by 16 zero bytes, seen as uint64 words."""

    def __init__(self, strings):
        count, width = len(strings), strings.dtype.itemsize
        self.per_row = width // 8 + 3
        padded = np.zeros((count, self.per_row * 8), dtype=np.uint8)
        if width:
            padded[:, :width] = strings.view(np.uint8).reshape(count, width)
        self.words = padded.view("<u8").reshape(-1).astype(_U64, copy=False)
        self.base = np.arange(count, dtype=np.int64) * self.per_row

    def fetch64(self, rows, offset):
        """The word at byte `offset` (an int, or an array with one per row) of `rows` (an
        index array, or None for every row)."""
        if not np.isscalar(offset) and offset.size and offset.min() == offset.max():
            offset = int(offset[0])  # one length: a strided column, not a gather
        if np.isscalar(offset) and rows is None:
            table = self.words.reshape(-1, self.per_row)
            low = table[:, offset >> 3]
            if offset & 7 == 0:
                return low
            shift = _U64(8 * (offset & 7))
            return (low >> shift) | (table[:, (offset >> 3) + 1] << (_U64(64) - shift))
        offset = np.asarray(offset, dtype=np.int64)
        start = (self.base if rows is None else self.base[rows]) + (offset >> 3)
        low = self.words[start]
        shift = (offset & 7).astype(_U64) * _U64(8)
        # numpy defines a shift by 64 bits as 0, so aligned words come out unchanged
        return (low >> shift) | (self.words[start + 1] << (_U64(64) - shift))

    def fetch32(self, rows, offset):
        return self.fetch64(rows, offset) & _U64(0xFFFFFFFF)

    def byte(self, rows, offset):
        return self.fetch64(rows, offset) & _U64(0xFF)


def _pick(rows, mask):
    """The rows of `rows` (None: all) that `mask` selects, as an index array."""
    return np.flatnonzero(mask) if rows is None else rows[mask]


def _len8to16(words, rows, length):
    mul = K2 + length * _U64(2)
    a = words.fetch64(rows, 0) + K2
    b = words.fetch64(rows, length.astype(np.int64) - 8)
    c = _rotate(b, 37) * mul + a
    d = (_rotate(a, 25) + b) * mul
    return _hash_len16(c, d, mul)


def _len4to7(words, rows, length):
    mul = K2 + length * _U64(2)
    a = words.fetch32(rows, 0)
    return _hash_len16(length + (a << _U64(3)),
                       words.fetch32(rows, length.astype(np.int64) - 4), mul)


def _len1to3(words, rows, length):
    a = words.byte(rows, 0)
    b = words.byte(rows, (length >> _U64(1)).astype(np.int64))
    c = words.byte(rows, length.astype(np.int64) - 1)
    y = a + (b << _U64(8))
    z = length + (c << _U64(2))
    return _shift_mix(y * K2 ^ z * K0) * K2


def _len0to16(words, rows, length):
    """Strings of at most 16 bytes. The class most of them are in is computed over all of
    them (wasted work on the others, but no gather), the rest over their own rows."""
    classes = [(length >= 8, _len8to16), ((length >= 4) & (length < 8), _len4to7),
               ((length > 0) & (length < 4), _len1to3)]
    counts = [int(mask.sum()) for mask, _ in classes]
    out = np.full(len(length), K2, dtype=_U64)  # the empty string's fingerprint
    majority = int(np.argmax(counts))
    if counts[majority] * 2 > len(length):
        mask, function = classes.pop(majority)
        counts.pop(majority)
        safe = np.maximum(length, _U64(1)) if majority == 2 else \
            np.maximum(length, _U64(4 if majority == 1 else 8))
        out = np.where(mask, function(words, rows, safe), out)
    for (mask, function), count in zip(classes, counts, strict=True):
        if count:
            out[mask] = function(words, _pick(rows, mask), length[mask])
    return out


def _len17to32(words, rows, length):
    mul = K2 + length * _U64(2)
    end = length.astype(np.int64)
    a = words.fetch64(rows, 0) * K1
    b = words.fetch64(rows, 8)
    c = words.fetch64(rows, end - 8) * mul
    d = words.fetch64(rows, end - 16) * K2
    return _hash_len16(_rotate(a + b, 43) + _rotate(c, 30) + d,
                       a + _rotate(b + K2, 18) + c, mul)


def _len33to64(words, rows, length):
    mul = K2 + length * _U64(2)
    end = length.astype(np.int64)
    a = words.fetch64(rows, 0) * K2
    b = words.fetch64(rows, 8)
    c = words.fetch64(rows, end - 8) * mul
    d = words.fetch64(rows, end - 16) * K2
    y = _rotate(a + b, 43) + _rotate(c, 30) + d
    z = _hash_len16(y, a + _rotate(b + K2, 18) + c, mul)
    e = words.fetch64(rows, 16) * mul
    f = words.fetch64(rows, 24)
    g = (y + words.fetch64(rows, end - 32)) * mul
    h = (z + words.fetch64(rows, end - 24)) * mul
    return _hash_len16(_rotate(e + f, 43) + _rotate(g, 30) + h,
                       e + _rotate(f + a, 18) + g, mul)


def _weak_hash32(words, rows, offset, a, b):
    """FarmHash's WeakHashLen32WithSeeds over the 32 bytes at `offset`: two words."""
    w, x = words.fetch64(rows, offset), words.fetch64(rows, offset + 8)
    y, z = words.fetch64(rows, offset + 16), words.fetch64(rows, offset + 24)
    a = a + w
    b = _rotate(b + a + z, 21)
    c = a
    a = a + x + y
    b = b + _rotate(a, 44)
    return a + z, b + c


def _len_over64(words, rows, length):
    """Strings over 64 bytes, all with the same number of 64-byte blocks before the last."""
    x = np.full(len(rows), _U64(81), dtype=_U64)
    y = np.full(len(rows), _U64((81 * int(K1) + 113) % 2**64), dtype=_U64)
    z = _shift_mix(y * K2 + _U64(113)) * K2
    v0 = v1 = w0 = w1 = np.zeros(len(rows), dtype=_U64)
    x = x * K2 + words.fetch64(rows, 0)
    blocks = int((int(length[0]) - 1) // 64)
    for block in range(blocks):
        s = block * 64
        x = _rotate(x + y + v0 + words.fetch64(rows, s + 8), 37) * K1
        y = _rotate(y + v1 + words.fetch64(rows, s + 48), 42) * K1
        x = x ^ w1
        y = y + v0 + words.fetch64(rows, s + 40)
        z = _rotate(z + w0, 33) * K1
        v0, v1 = _weak_hash32(words, rows, s, v1 * K1, x + w0)
        w0, w1 = _weak_hash32(words, rows, s + 32, z + w1, y + words.fetch64(rows, s + 16))
        z, x = x, z
    mul = K1 + ((z & _U64(0xFF)) << _U64(1))
    tail = (length - _U64(1)) & _U64(63)
    last = (blocks * 64 + tail.astype(np.int64) - 63)
    w0 = w0 + tail
    v0 = v0 + w0
    w0 = w0 + v0
    x = _rotate(x + y + v0 + words.fetch64(rows, last + 8), 37) * mul
    y = _rotate(y + v1 + words.fetch64(rows, last + 48), 42) * mul
    x = x ^ (w1 * _U64(9))
    y = y + v0 * _U64(9) + words.fetch64(rows, last + 40)
    z = _rotate(z + w0, 33) * mul
    v0, v1 = _weak_hash32(words, rows, last, v1 * mul, x + w0)
    w0, w1 = _weak_hash32(words, rows, last + 32, z + w1, y + words.fetch64(rows, last + 16))
    z, x = x, z
    return _hash_len16(_hash_len16(v0, w0, mul) + _shift_mix(y) * K0 + z,
                       _hash_len16(v1, w1, mul) + x, mul)


def fingerprint64(strings):
    """FarmHash Fingerprint64 of each byte string of `strings` (any shape; `S`, str or object
    arrays), as a uint64 array of the same shape."""
    strings = as_bytes_array(strings)
    shape = strings.shape
    flat = np.ascontiguousarray(strings.reshape(-1))
    out = np.empty(flat.shape, dtype=_U64)
    if not flat.size:
        return out.reshape(shape)
    length = np.char.str_len(flat).astype(_U64)
    words = _Words(flat)
    if flat.dtype.itemsize <= 16:
        out[:] = _len0to16(words, None, length)
        return out.reshape(shape)
    rows = np.arange(flat.size)
    classes = ((length <= 16, _len0to16), ((length > 16) & (length <= 32), _len17to32),
               ((length > 32) & (length <= 64), _len33to64))
    for mask, function in classes:
        if mask.any():
            out[mask] = function(words, rows[mask], length[mask])
    over = length > 64
    if over.any():
        blocks = (length[over] - _U64(1)) // _U64(64)
        for count in np.unique(blocks):
            mask = over & ((length - _U64(1)) // _U64(64) == count)
            out[mask] = _len_over64(words, rows[mask], length[mask])
    return out.reshape(shape)


def fingerprint_cat64(first, second):
    """TensorFlow's FingerprintCat64: two fingerprints (uint64 arrays) combined into one,
    order-dependent, as `sparse_cross_hashed` chains the features of a cross."""
    first = np.asarray(first).astype(_U64, copy=False)
    second = np.asarray(second).astype(_U64, copy=False)
    with np.errstate(over="ignore"):  # wrapping is the point; scalars would warn
        result = first ^ _CAT_MUL
        result = result ^ (_shift_mix(second * _CAT_MUL) * _CAT_MUL)
        result = result * _CAT_MUL
        result = _shift_mix(result) * _CAT_MUL
        return _shift_mix(result)
