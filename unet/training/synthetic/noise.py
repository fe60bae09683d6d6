"""Randomness as a function of global coordinates: hashed lattices, value noise, pixel noise.

Everything here depends on ``(seed, stream, position)`` only, never on the block being drawn, so a
scene renders the same whatever its partition into blocks.
"""

from __future__ import annotations

import numpy as np

MASK64 = (1 << 64) - 1


NOISE_TILE = 256


def stream_key(seed: int, stream: int) -> int:
    """A 63-bit key for one random stream of a scene."""
    return splitmix(splitmix(seed) ^ stream) >> 1


def splitmix(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & MASK64
    return value ^ (value >> 31)


def hash_uniform(key: int, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) float64 values, a hash of ``(key, iy, ix)`` (integers, broadcast)."""
    iy, ix = np.broadcast_arrays(np.asarray(iy), np.asarray(ix))
    with np.errstate(over="ignore"):
        h = iy.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        h ^= ix.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
        h ^= np.uint64(key & MASK64)
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def smoothstep(t: np.ndarray) -> np.ndarray:
    return t * t * (3.0 - 2.0 * t)


def value_noise(key: int, rows: slice, cols: slice, scale: float) -> np.ndarray:
    """Smooth noise in [0, 1) on the region's grid, float32 (h, w): hashed values on a lattice of
    spacing ``scale`` pixels, interpolated with smoothstep weights (separably, so it is cheap)."""
    ys = np.arange(rows.start, rows.stop, dtype=np.float64) / scale
    xs = np.arange(cols.start, cols.stop, dtype=np.float64) / scale
    y0, x0 = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
    ty = smoothstep(ys - y0).astype(np.float32)
    tx = smoothstep(xs - x0).astype(np.float32)
    lattice_y = np.arange(y0[0], y0[-1] + 2)
    lattice_x = np.arange(x0[0], x0[-1] + 2)
    lattice = hash_uniform(key, lattice_y[:, None], lattice_x[None, :]).astype(np.float32)
    left = lattice[:, x0 - lattice_x[0]]
    along_x = left + (lattice[:, x0 - lattice_x[0] + 1] - left) * tx[None, :]
    top = along_x[y0 - lattice_y[0]]
    return top + (along_x[y0 - lattice_y[0] + 1] - top) * ty[:, None]


def value_noise_at(key: int, y: np.ndarray, x: np.ndarray, scale: float) -> np.ndarray:
    """:func:`value_noise` evaluated at arbitrary points, float64."""
    ys, xs = np.asarray(y, np.float64) / scale, np.asarray(x, np.float64) / scale
    y0, x0 = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
    ty, tx = smoothstep(ys - y0), smoothstep(xs - x0)
    top = hash_uniform(key, y0, x0) * (1 - tx) + hash_uniform(key, y0, x0 + 1) * tx
    bottom = hash_uniform(key, y0 + 1, x0) * (1 - tx) + hash_uniform(key, y0 + 1, x0 + 1) * tx
    return top * (1 - ty) + bottom * ty


def gaussian_noise(key: int, rows: slice, cols: slice) -> np.ndarray:
    """Standard normal float32 (h, w) noise, assembled from fixed tiles of the plane."""
    tile = NOISE_TILE
    noise = np.empty((rows.stop - rows.start, cols.stop - cols.start), np.float32)
    for ty in range(rows.start // tile, (rows.stop - 1) // tile + 1):
        for tx in range(cols.start // tile, (cols.stop - 1) // tile + 1):
            values = np.random.default_rng([key, ty, tx]).standard_normal(
                (tile, tile), dtype=np.float32
            )
            y0, y1 = max(rows.start, ty * tile), min(rows.stop, (ty + 1) * tile)
            x0, x1 = max(cols.start, tx * tile), min(cols.stop, (tx + 1) * tile)
            noise[y0 - rows.start : y1 - rows.start, x0 - cols.start : x1 - cols.start] = values[
                y0 - ty * tile : y1 - ty * tile, x0 - tx * tile : x1 - tx * tile
            ]
    return noise


def to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)
