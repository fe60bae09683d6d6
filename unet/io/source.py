"""Open a 2-D image stored in Zarr (plain array or OME-Zarr image group) as a ``(C, Y, X)`` source.

An :class:`ImageSource` is a small, picklable description of where the pixels are and how the
stored axes map onto ``(C, Y, X)``; it opens the store lazily, so it can travel to Dask workers
and each process opens the store once. Paths may be local or fsspec URLs (``s3://``,
``memory://``, ...): zarr opens URLs through its ``FsspecStore``.

How the stored axes map onto ``(C, Y, X)`` is :mod:`unet.io.axes`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unet.errors import InputNotFound, InvalidImage, InvalidParameter, UnsupportedInput
from unet.io.axes import (
    CHANNEL,
    COLUMNS,
    ROWS,
    array_axes,
    normalise_axes,
    ome_axes,
    ome_scale,
    select_region,
    spatial_chunks,
    spatial_shape,
)
from unet.io.locations import is_url, resolve_location

if TYPE_CHECKING:
    import zarr

    from unet.io.chunkcache import ChunkCache


_INGEST_HINT = "TIFF, SVS, PNG and JPEG files must be converted first with `unet ingest`"


@dataclass(frozen=True)
class ImageSource:
    """A picklable handle on a ``(C, Y, X)`` image in a Zarr store.

    The store is opened on first use in each process and the open array is cached outside the
    pickled state, so a source shipped to Dask workers carries only this description.

    Attributes
    ----------
    url: absolute local path or fsspec URL of the group or array as given
    array_path: path of the level-0 array inside the store (``""`` when ``url`` is the array)
    shape: ``(C, Y, X)`` after axis handling (``C == 1`` for a grayscale image)
    chunks: spatial ``(cy, cx)`` chunking (shard shape if sharded) of the stored level-0 array
    dtype: numpy dtype name of the stored data
    channels_last: whether the stored channel axis comes after the image axes
    axes: stored axis names, the channel axis as ``"c"`` and the image axes as ``"y"``, ``"x"``
    pixel_size: ``(y, x)`` scale of level 0 from OME metadata, if any
    level_paths: paths in the store of the OME pyramid levels, level 0 first (``()`` if none)
    """

    url: str
    array_path: str
    shape: tuple[int, int, int]
    chunks: tuple[int, int] | None
    dtype: str
    channels_last: bool
    axes: tuple[str, ...]
    pixel_size: tuple[float, float] | None = None
    level_paths: tuple[str, ...] = ()

    def __getstate__(self) -> dict[str, Any]:
        # The cached open array stays behind: workers reopen the store themselves.
        state = dict(self.__dict__)
        state.pop("_array", None)
        state.pop("_cache", None)
        state.pop("_chunk_files", None)
        return state

    @cached_property
    def _array(self) -> zarr.Array:
        return _open_array(self.url, self.array_path)

    def read(self, rows: slice, cols: slice, out: np.ndarray | None = None) -> np.ndarray:
        """Read one region of level 0, touching only the chunks it overlaps.

        Parameters
        ----------
        rows, cols: ``slice(start, stop)`` within ``0 .. Y`` and ``0 .. X``, step 1
            (``None`` bounds mean the image border)
        out: a C-contiguous array of the result's shape and dtype to decode into (see
            :func:`unet.io.axes.select_region`); returned

        Returns
        -------
        (C, stop_row - start_row, stop_col - start_col), the stored dtype
        """
        _, height, width = self.shape
        rows = _check_slice(rows, height, "rows")
        cols = _check_slice(cols, width, "cols")
        return select_region(self._array, self.axes, rows, cols, out=out)

    def read_stored_chunk(self, i: int, j: int, out: np.ndarray) -> np.ndarray:
        """Stored chunk ``(i, j)`` of level 0 (row and column of its grid; every channel) into
        ``out``: C-contiguous ``(C, h, w)`` of the stored dtype, ``h, w`` the chunk's part inside
        the image. Returned.

        The files are decoded straight into ``out`` where :class:`unet.io.chunkfiles.ChunkFiles`
        can (a local Zarr v3 array of ``(C, Y, X)`` or ``(Y, X)`` axes, Blosc or raw); else
        through zarr, as :meth:`read`.
        """
        files = self._chunk_files
        rows, cols = self.stored_cell()
        region = (
            slice(i * rows, i * rows + out.shape[1]),
            slice(j * cols, j * cols + out.shape[2]),
        )
        if files is None or self.axes not in ((CHANNEL, ROWS, COLUMNS), (ROWS, COLUMNS)):
            return self.read(*region, out=out)
        whole = out.shape[1:] == (rows, cols)
        if len(self.axes) == 2:
            if whole:
                files.read((i, j), out=out[0])
            else:
                self._clip(files.read((i, j)), out[0])
            return out
        depth = files.chunks[0]
        for first in range(0, self.shape[0], depth):
            target = out[first : first + depth]
            if whole and target.shape[0] == depth:
                files.read((first // depth, i, j), out=target)
            else:
                self._clip(files.read((first // depth, i, j)), target)
        return out

    @staticmethod
    def _clip(chunk: np.ndarray, target: np.ndarray) -> np.ndarray:
        target[...] = chunk[tuple(slice(0, n) for n in target.shape)]
        return target

    def stored_cell(self) -> tuple[int, int]:
        """``(rows, cols)`` of a stored (inner) chunk of level 0: what is decoded at once."""
        stored = self._array.chunks
        return int(stored[self.axes.index(ROWS)]), int(stored[self.axes.index(COLUMNS)])

    @cached_property
    def _chunk_files(self):
        from unet.io.chunkfiles import ChunkFiles

        return ChunkFiles.of(self._array)

    def read_cached(self, rows: slice, cols: slice) -> np.ndarray:
        """:meth:`read`, through a cache of decoded chunks kept with this object.

        For callers that read overlapping windows, as the chunk tasks do (see
        :mod:`unet.io.chunkcache`); the cache stays behind when the source is pickled.
        """
        _, height, width = self.shape
        return self._cache.read(
            _check_slice(rows, height, "rows"), _check_slice(cols, width, "cols")
        )

    def grow_cache(self, output_chunks: int, max_bytes: int) -> None:
        """Let :meth:`read_cached` keep the decoded input of ``output_chunks`` output chunks
        (``chunks``-sized: a whole shard of a sharded input), within ``max_bytes``: for callers
        that read several windows ahead or at once (see :mod:`unet.engine.stream`)."""
        cache = self._cache
        cache.grow(output_chunks * self._stored_per_chunk, max_bytes)

    @property
    def _stored_per_chunk(self) -> int:
        """Stored (inner) chunks per output chunk: one, or the inner chunks of a shard."""
        stored = self._array.chunks
        cell = (int(stored[self.axes.index(ROWS)]), int(stored[self.axes.index(COLUMNS)]))
        chunk = self.chunks or cell
        return -(-chunk[0] // cell[0]) * -(-chunk[1] // cell[1])

    @cached_property
    def _cache(self) -> ChunkCache:
        from unet.io.chunkcache import CACHE_CHUNKS, ChunkCache

        stored = self._array.chunks  # the inner chunks of a sharded array: what is decoded
        cell = (int(stored[self.axes.index(ROWS)]), int(stored[self.axes.index(COLUMNS)]))
        # The engine's output chunks are self.chunks (a whole shard): size the cache in those.
        return ChunkCache(self, cell, max_chunks=CACHE_CHUNKS * self._stored_per_chunk)

    def identity(self) -> dict[str, Any]:
        """What identifies this input in a run fingerprint; JSON-serialisable.

        ``modified`` is a cheap change marker: the modification time of the level-0 array's
        metadata file for local stores, the ETag or modification time reported by fsspec for
        URLs (``None`` where the store reports none). Rewriting the array changes it; editing
        chunks in place does not.
        """
        return {
            "url": self.url,
            "array_path": self.array_path,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "chunks": list(self.chunks) if self.chunks is not None else None,
            "axes": list(self.axes),
            "channels_last": self.channels_last,
            "modified": _change_marker(self.url, self.array_path),
        }

    def low_resolution(self, max_side: int = 2048) -> tuple[np.ndarray, int]:
        """A reduced copy of the whole image whose sides are at most ``max_side``.

        Uses the highest-resolution OME pyramid level that fits in ``max_side``; where none
        does (or the store has no pyramid), the smallest level is subsampled further by a
        stride, reading one band of chunk rows at a time so memory stays bounded.

        Returns
        -------
        image: float32 (C, h, w); ``h = ceil(Y / factor)`` for plain arrays and ceil-halving
            pyramids (those :func:`unet.io.pyramid.build_pyramid` writes), one less where a
            pyramid level floors
        factor: low-resolution pixel ``(i, j)`` covers level-0 rows ``i*factor .. (i+1)*factor-1``
            and the same columns
        """
        if not isinstance(max_side, int) or max_side < 1:
            raise InvalidParameter(f"max_side must be a positive integer, got {max_side!r}")
        level, level_factor = self._fitting_level(max_side)
        height, width = spatial_shape(level, self.axes)
        stride = max(1, math.ceil(max(height, width) / max_side))
        chunk_rows = spatial_chunks(level, self.axes)[0]
        band = stride * max(1, math.ceil(chunk_rows / stride))
        out = np.empty(
            (self.shape[0], math.ceil(height / stride), math.ceil(width / stride)), np.float32
        )
        for start in range(0, height, band):
            stop = min(start + band, height)
            block = select_region(
                level, self.axes, slice(start, stop, stride), slice(0, width, stride)
            )
            out[:, start // stride : start // stride + block.shape[1]] = block
        return out, level_factor * stride

    def _fitting_level(self, max_side: int) -> tuple[zarr.Array, int]:
        """The first pyramid level fitting ``max_side`` (else the smallest) and its factor."""
        _, height, width = self.shape
        chosen: tuple[zarr.Array, int] = (self._array, 1)
        if max(height, width) <= max_side:
            return chosen
        for path in self.level_paths[1:]:
            level = _open_array(self.url, path)
            if level.ndim != len(self.axes):
                continue
            factor = _level_factor((height, width), spatial_shape(level, self.axes))
            if factor is None or factor <= chosen[1]:
                continue
            chosen = (level, factor)
            if max(spatial_shape(level, self.axes)) <= max_side:
                break
        return chosen


def open_image(url: str | os.PathLike[str], *, channels_last: bool = False) -> ImageSource:
    """Open a 2-D image in a Zarr array or OME-Zarr image group.

    Parameters
    ----------
    url: local path or fsspec URL of a Zarr array (v2 or v3) or of an OME-Zarr image group
    channels_last: a plain 3-D array is ``(Y, X, C)`` rather than ``(C, Y, X)``

    Raises
    ------
    InputNotFound
        Nothing exists at ``url``.
    UnsupportedInput
        ``url`` is not a Zarr store, or a group without OME image metadata.
    InvalidImage
        Empty, boolean, complex or non-numeric data, or an extra axis longer than 1.
    InvalidParameter
        ``channels_last`` contradicts axis names stored with the array.
    """
    location = resolve_location(url)
    node = _open_node(location)
    import zarr

    if isinstance(node, zarr.Group):
        return _open_ome_group(location, node, channels_last)
    return _source_from_array(
        location, "", node, array_axes(location, node, channels_last), channels_last, None, ()
    )


def _open_node(location: str) -> zarr.Array | zarr.Group:
    import zarr

    if not is_url(location):
        path = Path(location)
        if not path.exists():
            raise InputNotFound(f"input {location} does not exist: check the path")
        if not path.is_dir():
            raise UnsupportedInput(f"{location} is a file, not a Zarr store: {_INGEST_HINT}")
        markers = ("zarr.json", ".zarray", ".zgroup")
        if not any((path / marker).is_file() for marker in markers):
            raise UnsupportedInput(
                f"{location} is a folder without Zarr metadata (zarr.json, .zarray or .zgroup), "
                f"not a Zarr store: give the store's own path; {_INGEST_HINT}"
            )
    try:
        return zarr.open(store=location, mode="r")
    except FileNotFoundError as error:
        raise InputNotFound(
            f"no Zarr array or group at {location}: check the URL and that the store exists"
        ) from error
    except (ValueError, KeyError, OSError) as error:
        raise UnsupportedInput(
            f"{location} could not be opened as a Zarr store ({error}): {_INGEST_HINT}"
        ) from error


def _open_array(location: str, array_path: str) -> zarr.Array:
    import zarr

    array = zarr.open_array(store=location, path=array_path, mode="r")
    if not array.dtype.isnative:
        # zarrs decodes into native byte order only ("Non-native byte order not supported").
        from unet.io.codecs import with_store_pipeline

        array = with_store_pipeline(array)
    return array


def _open_ome_group(location: str, group: zarr.Group, channels_last: bool) -> ImageSource:
    """The image of an OME-Zarr group: its largest level (datasets may list levels in any
    order), its axes by name, its pixel size; hostile metadata is one :class:`InvalidImage`."""
    attributes = group.attrs.asdict()
    ome = attributes.get("ome", attributes)
    prefix = ""
    if isinstance(ome, dict) and "bioformats2raw.layout" in ome and "multiscales" not in ome:
        # bioformats2raw puts the first image in the sub-group "0".
        import zarr

        group = zarr.open_group(store=location, path="0", mode="r")
        attributes = group.attrs.asdict()
        ome = attributes.get("ome", attributes)
        prefix = "0/"
    multiscales = ome.get("multiscales") if isinstance(ome, dict) else None
    if not multiscales:
        raise UnsupportedInput(
            f"{location} is a Zarr group without OME-NGFF multiscales metadata: give the path "
            "of the image array inside it (e.g. <group>/0) or of an OME-Zarr image group"
        )
    multiscale = multiscales[0] if isinstance(multiscales, list) else None
    if not isinstance(multiscale, dict):
        raise InvalidImage(
            f"OME-Zarr image {location} has multiscales metadata of the wrong form (a list of "
            f"objects is expected, found {type(multiscales).__name__}): fix its metadata"
        )
    datasets = multiscale.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise InvalidImage(
            f"OME-Zarr image {location} lists no datasets in its multiscales metadata: "
            "rewrite the metadata or open the level-0 array directly"
        )
    for dataset in datasets:
        path = dataset.get("path") if isinstance(dataset, dict) else None
        if not isinstance(path, str) or not path:
            raise InvalidImage(
                f"OME-Zarr image {location} has a dataset {dataset!r} without a path (a string "
                "naming its array): fix its multiscales metadata"
            )
    levels = [_open_level(location, prefix + dataset["path"]) for dataset in datasets]
    ndim = levels[0].ndim
    names, types = ome_axes(location, multiscale, ndim)
    if len(names) != ndim or any(level.ndim != ndim for level in levels):
        raise InvalidImage(
            f"OME-Zarr image {location} declares {len(names)} axes {tuple(names)} for levels "
            f"of {sorted({level.ndim for level in levels})} dimensions: fix its multiscales "
            "metadata"
        )
    axes = normalise_axes(location, names, types, levels[0].shape)
    # The largest level is the image, wherever the metadata lists it; the others follow it
    # from large to small, as the pyramid's readers expect.
    order = sorted(range(len(levels)), key=lambda i: -math.prod(spatial_shape(levels[i], axes)))
    largest = order[0]
    if largest != 0:
        axes = normalise_axes(location, names, types, levels[largest].shape)
    level_paths = tuple(prefix + datasets[i]["path"] for i in order)
    if channels_last and CHANNEL in axes and axes.index(CHANNEL) < axes.index(ROWS):
        raise InvalidParameter(
            f"channels_last was given but {location} declares its axes {axes} in OME metadata: "
            "drop --channels-last"
        )
    scale = ome_scale(location, multiscale, datasets[largest], len(names))
    pixel_size = None
    if scale is not None:
        pixel_size = (float(scale[axes.index(ROWS)]), float(scale[axes.index(COLUMNS)]))
        units = [axis.get("unit") for axis in multiscale.get("axes", []) if isinstance(axis, dict)]
        if pixel_size == (1.0, 1.0) and not any(units):
            # A unit-less scale of 1 is the writer's placeholder, not a measured pixel size.
            pixel_size = None
    return _source_from_array(
        location, level_paths[0], levels[largest], axes, channels_last, pixel_size, level_paths
    )


def _open_level(location: str, path: str) -> zarr.Array:
    """A level array the OME metadata names; InvalidImage where there is none."""
    try:
        array = _open_array(location, path)
    except (FileNotFoundError, KeyError, ValueError, TypeError) as error:
        raise InvalidImage(
            f"OME-Zarr image {location} names level '{path}', which is not an array in the "
            f"store ({type(error).__name__}): rewrite the metadata or open a level directly"
        ) from None
    return array


def _source_from_array(
    location: str,
    array_path: str,
    array: zarr.Array,
    axes: tuple[str, ...],
    channels_last: bool,
    pixel_size: tuple[float, float] | None,
    level_paths: tuple[str, ...],
) -> ImageSource:
    shape = tuple(int(n) for n in array.shape)
    dtype = np.dtype(array.dtype)
    where = f"{location}/{array_path}" if array_path else location
    if dtype.kind not in "uif":
        raise InvalidImage(
            f"array {where} has dtype {dtype}: images must hold integers or floats; convert "
            "it (e.g. bool masks to uint8) before segmenting"
        )
    if 0 in shape:
        raise InvalidImage(
            f"array {where} of shape {shape} is empty: give an image with at least one pixel"
        )
    channels = shape[axes.index(CHANNEL)] if CHANNEL in axes else 1
    height, width = spatial_shape(array, axes)
    stored_last = CHANNEL in axes and axes.index(CHANNEL) > axes.index(ROWS)
    return ImageSource(
        url=location,
        array_path=array_path,
        shape=(channels, height, width),
        chunks=spatial_chunks(array, axes),
        dtype=dtype.name,
        channels_last=stored_last or (channels_last and CHANNEL in axes),
        axes=axes,
        pixel_size=pixel_size,
        level_paths=level_paths,
    )


def _check_slice(region: slice, length: int, name: str) -> slice:
    if not isinstance(region, slice):
        raise InvalidParameter(f"{name} must be a slice, got {region!r}")
    start = 0 if region.start is None else region.start
    stop = length if region.stop is None else region.stop
    if region.step not in (None, 1) or not 0 <= start <= stop <= length:
        raise InvalidParameter(
            f"{name} {region} is not a step-1 slice within 0..{length}: clip it to the image"
        )
    return slice(int(start), int(stop))


def _level_factor(base: tuple[int, int], level: tuple[int, int]) -> int | None:
    """Integer downsampling factor of a level, or None when it is not a clean integer pyramid."""
    if min(level) < 1:
        return None
    factor = round(max(b / n for b, n in zip(base, level, strict=True)))
    fits = all(b // factor <= n <= -(-b // factor) for b, n in zip(base, level, strict=True))
    return factor if factor >= 1 and fits else None


def _change_marker(location: str, array_path: str) -> str | int | None:
    """Modification marker of the array metadata file, or None where none is reported."""
    names = ("zarr.json", ".zarray")
    if not is_url(location):
        folder = Path(location, array_path) if array_path else Path(location)
        for name in names:
            try:
                return (folder / name).stat().st_mtime_ns
            except FileNotFoundError:
                continue
        return None
    import fsspec

    try:
        filesystem, root = fsspec.core.url_to_fs(location)
        for name in names:
            path = "/".join(part for part in (root, array_path, name) if part)
            if filesystem.exists(path):
                info = filesystem.info(path)
                for key in ("ETag", "etag", "mtime", "LastModified", "last_modified", "created"):
                    if info.get(key) is not None:
                        return str(info[key])
                return None
    except OSError:
        return None
    return None
