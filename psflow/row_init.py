"""The initial rows of an embedding table's keys: deterministic, a function of the table's
initializer spec and the key only, so any shard, any replay and any restore gives a key the
same first row."""

import zlib

import numpy as np

from .errors import InvalidArgumentError
from .key_index import GOLDEN, MIX_M1, mix64

INITIALIZERS = ("zeros", "ones", "constant", "random_normal", "truncated_normal",
                "random_uniform")


def _uniforms(seed, keys, dim, counter):
    """Uniforms in (0, 1), shape (len(keys), dim), a function of (seed, key, column, counter)."""
    with np.errstate(over="ignore"):
        base = mix64(keys.view(np.uint64) ^ np.uint64(seed)) + np.uint64(counter) * GOLDEN
        columns = np.arange(dim, dtype=np.uint64) * MIX_M1
        bits = mix64(base[:, None] ^ columns[None, :])
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / (1 << 53))


def initial_rows(spec, keys, dim, dtype):
    """The initial rows of `keys` under `spec` ({"kind": one of INITIALIZERS, its parameters,
    "seed": int}): a function of (spec, key) only, so any shard, any replay and any restore
    gives a key the same first row."""
    keys = np.ascontiguousarray(keys, dtype=np.int64)
    kind, seed = spec["kind"], int(spec.get("seed", 0)) & 0xFFFFFFFFFFFFFFFF
    shape = (keys.size, dim)
    if kind == "zeros":
        return np.zeros(shape, dtype=dtype)
    if kind == "ones":
        return np.ones(shape, dtype=dtype)
    if kind == "constant":
        return np.full(shape, spec.get("value", 0.0), dtype=dtype)
    if kind == "random_uniform":
        low, high = spec.get("minval", 0.0), spec.get("maxval", 1.0)
        return (low + (high - low) * _uniforms(seed, keys, dim, 0)).astype(dtype)
    if kind in ("random_normal", "truncated_normal"):
        mean, stddev = spec.get("mean", 0.0), spec.get("stddev", 1.0)
        z = _normals(seed, keys, dim, 0)
        if kind == "truncated_normal":
            bad = np.abs(z) > 2.0
            counter = 1
            while bad.any():
                rows = np.flatnonzero(bad.any(axis=1))
                redraw = _normals(seed, keys[rows], dim, counter)
                z[rows] = np.where(bad[rows], redraw, z[rows])
                bad = np.abs(z) > 2.0
                counter += 1
        return (mean + stddev * z).astype(dtype)
    raise InvalidArgumentError(f"unknown embedding initializer {kind!r}; known: "
                               f"{', '.join(INITIALIZERS)}")


def _normals(seed, keys, dim, counter):
    u1 = _uniforms(seed, keys, dim, 2 * counter)
    u2 = _uniforms(seed, keys, dim, 2 * counter + 1)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def name_seed(name, seed=0):
    """A table's initializer seed from its name and a user seed: below 2**53, so it travels
    exactly as a double."""
    return (zlib.crc32(name.encode()) * 1_000_003 + int(seed)) % (1 << 53)

