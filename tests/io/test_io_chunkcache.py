"""ChunkCache: windows equal plain reads, each stored chunk decoded once in strip order."""

from __future__ import annotations

import pickle

import numpy as np
import zarr

from unet.io.chunkcache import ChunkCache
from unet.io.source import open_image
from unet.tiling import strip_order


def _source(path, shape=(3, 23, 37), chunks=(1, 5, 7), dtype=np.uint16, **kwargs):
    data = (np.arange(np.prod(shape)) % 1009).astype(dtype).reshape(shape)
    array = zarr.create_array(store=str(path), shape=shape, dtype=dtype, chunks=chunks, **kwargs)
    array[...] = data
    return open_image(path), data


def test_windows_equal_plain_reads(tmp_path):
    source, data = _source(tmp_path / "a.zarr")
    cache = ChunkCache(source, (5, 7), max_chunks=4)
    rng = np.random.default_rng(0)
    for _ in range(60):
        top, bottom = sorted(rng.integers(0, 24, 2))
        left, right = sorted(rng.integers(0, 38, 2))
        window = cache.read(slice(int(top), int(bottom)), slice(int(left), int(right)))
        np.testing.assert_array_equal(window, data[:, top:bottom, left:right])
        assert window.dtype == data.dtype
    assert len(cache._chunks) <= 4


def test_strip_order_decodes_each_chunk_about_once(tmp_path):
    # 8 x 8 output chunks of 4 px, windows with a 2 px halo: 3 x 3 stored chunks each.
    source, data = _source(tmp_path / "a.zarr", shape=(1, 32, 32), chunks=(1, 4, 4))
    cache = ChunkCache(source, (4, 4))
    order = strip_order([(i, j) for i in range(8) for j in range(8)])
    for i, j in order:
        rows = slice(max(4 * i - 2, 0), min(4 * i + 6, 32))
        cols = slice(max(4 * j - 2, 0), min(4 * j + 6, 32))
        np.testing.assert_array_equal(cache.read(rows, cols), data[:, rows, cols])
    # Two strips of 4 chunk columns, each reading its 4 columns and 2 neighbours' (one at the
    # image border): 8 rows x 5 columns per strip. Plain reads would decode 196 chunks.
    assert cache.decoded == 2 * 8 * 5


def test_chunks_too_large_for_the_budget_are_read_straight(tmp_path):
    source, data = _source(tmp_path / "a.zarr")
    cache = ChunkCache(source, (5, 7), max_bytes=2 * 3 * 5 * 7 * 2 - 1)
    np.testing.assert_array_equal(cache.read(slice(2, 20), slice(3, 30)), data[:, 2:20, 3:30])
    assert cache.capacity < 2 and cache.decoded == 0


def test_source_read_cached_uses_inner_chunks_and_stays_behind_when_pickled(tmp_path):
    source, data = _source(
        tmp_path / "a.zarr", shape=(2, 40, 40), chunks=(2, 10, 10), shards=(2, 20, 20)
    )
    np.testing.assert_array_equal(source.read_cached(slice(5, 25), slice(0, 40)), data[:, 5:25])
    assert source._cache.cell == (10, 10)
    assert source._cache.capacity == 18 * 4  # a shard, the engine's output chunk, holds 4
    assert "_cache" not in source.__getstate__()
    clone = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(clone.read_cached(slice(0, 40), slice(0, 40)), data)
