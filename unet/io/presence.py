"""Which stored chunks of a Zarr image exist, and images that store every one.

Zarr leaves out a chunk whose pixels all equal the fill value (``write_empty_chunks`` is off by
default), and reads a missing chunk as the fill value. In a store from elsewhere a missing chunk
is such a chunk or a lost one, and nobody can tell which. ``unet ingest`` stores every chunk of
level 0 and says so in the level-0 array's attributes (``{"unet": {"every_chunk_stored": true}}``):
in its images a missing chunk is lost data (:func:`every_chunk_stored`).
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING

import numpy as np

from unet.io.axes import COLUMNS, ROWS
from unet.io.codecs import with_store_pipeline

if TYPE_CHECKING:
    import zarr

    from unet.io.source import ImageSource

#: The level-0 array attribute (under "unet") of images whose every chunk is stored.
EVERY_CHUNK_STORED = "every_chunk_stored"


def stored_chunk_shape(source: ImageSource) -> tuple[int, int]:
    """``(rows, cols)`` of one stored object of level 0: a shard of a sharded array, else a chunk."""
    array = _level0(source)
    grid = array.shards or array.chunks
    return int(grid[source.axes.index(ROWS)]), int(grid[source.axes.index(COLUMNS)])


def missing_chunks(source: ImageSource) -> set[tuple[int, int]]:
    """The ``(row, col)`` indices, in units of :func:`stored_chunk_shape`, of the stored objects
    of level 0 that are absent from the store (in any channel).

    One listing of the array's keys (a directory walk, or an object store's list).
    """
    array = _level0(source)
    rows, cols = source.axes.index(ROWS), source.axes.index(COLUMNS)
    return {(coords[rows], coords[cols]) for coords in _absent(array)}


def every_chunk_stored(source: ImageSource) -> bool:
    """Whether the image says every chunk of its level 0 is stored (``unet ingest`` images)."""
    attributes = _level0(source).attrs.get("unet")
    return isinstance(attributes, dict) and attributes.get(EVERY_CHUNK_STORED) is True


def store_every_chunk(location: str, path: str) -> None:
    """Store the chunks of array ``path`` at ``location`` that Zarr left out as equal to the fill
    value, then record in its attributes that every chunk is stored."""
    import zarr

    array = with_store_pipeline(
        zarr.open_array(store=location, path=path, mode="r+"), write_empty_chunks=True
    )
    grid = array.shards or array.chunks
    for coords in _absent(array):
        region = tuple(
            slice(i * c, min((i + 1) * c, n))
            for i, c, n in zip(coords, grid, array.shape, strict=True)
        )
        shape = tuple(s.stop - s.start for s in region)
        array[region] = np.full(shape, array.fill_value, dtype=array.dtype)
    array.attrs["unet"] = {**dict(array.attrs.get("unet") or {}), EVERY_CHUNK_STORED: True}


def _absent(array: zarr.Array) -> list[tuple[int, ...]]:
    """Grid coordinates of the stored objects (shards, else chunks) absent from the store."""
    from zarr.core.sync import sync

    store, path = array.store_path.store, array.store_path.path
    prefix = f"{path}/" if path else ""

    async def listed() -> set[str]:
        return {key[len(prefix) :] async for key in store.list_prefix(prefix)}

    present = sync(listed())
    grid = array.shards or array.chunks
    counts = [math.ceil(n / c) for n, c in zip(array.shape, grid, strict=True)]
    return [
        coords
        for coords in itertools.product(*(range(n) for n in counts))
        if array.metadata.encode_chunk_key(coords) not in present
    ]


def _level0(source: ImageSource) -> zarr.Array:
    import zarr

    return zarr.open_array(store=source.url, path=source.array_path, mode="r")
