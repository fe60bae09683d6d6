"""Which stored chunks of a Zarr image exist, and images that store every one.

Zarr leaves out a chunk whose pixels all equal the fill value (``write_empty_chunks`` is off by
default), and reads a missing chunk as the fill value. In a store from elsewhere a missing chunk
is such a chunk or a lost one, and nobody can tell which. ``unet ingest`` stores every chunk of
level 0 and says so in the level-0 array's attributes (``{"unet": {"every_chunk_stored": true}}``):
in its images a missing chunk is lost data (:func:`every_chunk_stored`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from unet.io.axes import COLUMNS, ROWS
from unet.io.codecs import with_store_pipeline
from unet.io.complete import ATTRIBUTE

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


def stored_grids(source: ImageSource) -> tuple[np.ndarray, np.ndarray]:
    """bool (rows, cols) twice, in units of :func:`stored_chunk_shape`: whether level 0's stored
    object at each place is in the store in some channel, and in every channel.

    One listing of the array's keys (a directory walk, or an object store's list); memory and
    time go with the stored objects and the grid's size (one byte a place), never with Python
    objects per place.
    """
    array = _level0(source)
    rows, cols = source.axes.index(ROWS), source.axes.index(COLUMNS)
    counts = stored_objects(array)
    others = tuple(axis for axis in range(array.ndim) if axis not in (rows, cols))
    per_place = counts.sum(axis=others) if others else counts
    if rows > cols:
        per_place = per_place.T
    channels = int(np.prod([counts.shape[axis] for axis in others], dtype=np.int64))
    return per_place > 0, per_place == channels


def every_chunk_stored(source: ImageSource) -> bool:
    """Whether the image says every chunk of its level 0 is stored (``unet ingest`` images)."""
    attributes = _level0(source).attrs.get(ATTRIBUTE)
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
    array.attrs[ATTRIBUTE] = {**dict(array.attrs.get(ATTRIBUTE) or {}), EVERY_CHUNK_STORED: True}


def _absent(array: zarr.Array) -> list[tuple[int, ...]]:
    """Grid coordinates of the stored objects (shards, else chunks) absent from the store."""
    return [tuple(coords) for coords in np.argwhere(stored_objects(array) == 0).tolist()]


def stored_objects(array: zarr.Array) -> np.ndarray:
    """uint8 (grid): 1 where the array's stored object (shard, else chunk) is in the store, from
    one listing of its keys; one byte per place of the grid."""
    from zarr.core.sync import sync

    store, path = array.store_path.store, array.store_path.path
    prefix = f"{path}/" if path else ""
    decode = _chunk_key_decoder(array)
    grid = array.shards or array.chunks
    counts = [math.ceil(n / c) for n, c in zip(array.shape, grid, strict=True)]
    stored = np.zeros(counts, np.uint8)

    async def mark() -> None:
        async for key in store.list_prefix(prefix):
            coords = decode(key[len(prefix) :])
            if coords is not None and len(coords) == stored.ndim:
                if all(0 <= c < n for c, n in zip(coords, counts, strict=True)):
                    stored[coords] = 1

    sync(mark())
    return stored


def _chunk_key_decoder(array: zarr.Array):
    """A function from a key below the array to its chunk coordinates (None: not a chunk).

    Written out rather than zarr's ``decode_chunk_key``, which (zarr 3.1) does not decode the
    default encoding's own keys (``c/0/1`` gives an empty first part).
    """
    metadata = array.metadata
    encoding = getattr(metadata, "chunk_key_encoding", None)
    if encoding is not None:  # Zarr v3: "default" (c/0/1) or "v2" (0.1)
        separator = encoding.separator
        prefix = f"c{separator}" if encoding.name == "default" else ""
    else:
        separator, prefix = getattr(metadata, "dimension_separator", ".") or ".", ""

    def decode(key: str) -> tuple[int, ...] | None:
        if not key.startswith(prefix):
            return None
        try:
            return tuple(int(part) for part in key[len(prefix) :].split(separator))
        except ValueError:
            return None  # metadata (zarr.json, .zarray, .zattrs) or another file

    return decode


def _level0(source: ImageSource) -> zarr.Array:
    import zarr

    return zarr.open_array(store=source.url, path=source.array_path, mode="r")
