"""Convert TIFF, BigTIFF, pyramidal TIFF/SVS, PNG and JPEG files into OME-Zarr 0.5 images.

TIFFs are read through tifffile's Zarr interface, which decodes only the TIFF tiles (or strips)
a region overlaps, and copied one block of output chunks at a time: memory stays at a few chunks
for a tiled slide of any size (a band of full-width strips for a striped TIFF). GeoTIFFs and
Cloud-Optimized GeoTIFFs (TIFFs with GeoTIFF tags) are read the same way through rasterio, and
their CRS, geotransform, nodata value and band names are stored with the image (see
:mod:`unet.io.geo`). PNG and JPEG have no random access and are decoded whole. Every chunk of
level 0 is stored, also those equal to the fill value, and the image says so
(:mod:`unet.io.presence`): a chunk missing later is known to be lost.

A local output is written to a hidden sibling folder and renamed into place at the end, so a
failed ingest leaves no partial output and an overwritten output is replaced only on success;
the sibling of an ingest that was killed is removed by the next ingest of the same output
(:mod:`unet.io.staging`).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unet.errors import (
    InputNotFound,
    InputReadError,
    InvalidImage,
    InvalidParameter,
    OutputExists,
    UnsupportedInput,
)
from unet.io.complete import ATTRIBUTE
from unet.io.geo import is_geotiff, open_geotiff, write_georeference
from unet.io.locations import check_readable, is_url, remove_location, resolve_location
from unet.io.omezarr import LEVEL0, create_image
from unet.io.presence import store_every_chunk
from unet.io.pyramid import build_pyramid
from unet.io.replace import check_apart, check_replaceable
from unet.io.source import ImageSource, open_image
from unet.io.staging import (
    remove_staging,
    remove_stale_staging,
    replace_location,
    staging_location,
)

if TYPE_CHECKING:
    import zarr

    from unet.io.geo import Georeference

SUPPORTED = "TIFF, BigTIFF, pyramidal TIFF (SVS), GeoTIFF/COG, PNG and JPEG"
#: Output chunks copied per block from a tiled source; zarr encodes a block's chunks in parallel.
BLOCK_CHUNKS = 4
_MAGIC = {
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
    b"II+\x00": "tiff",
    b"MM\x00+": "tiff",
    b"\x89PNG": "png",
    b"\xff\xd8\xff": "jpeg",
}
#: Micrometres per pixel in an Aperio description: "...|AppMag = 20|MPP = 0.4990|...".
_SVS_MPP = re.compile(r"\|\s*MPP\s*=\s*([0-9.]+(?:[eE][-+]?[0-9]+)?)")
_RGB_NAMES = ["red", "green", "blue", "alpha"]
#: The key of the image group's ``unet`` attribute that records the file it was ingested from.
INGESTED = "ingested"
_MICROMETRES_PER_UNIT = {2: 25400.0, 3: 10000.0}  # TIFF ResolutionUnit: inch, centimetre


@dataclass
class _Reader:
    """A ``(C, Y, X)`` view on an input file, read region by region."""

    shape: tuple[int, int, int]
    dtype: np.dtype
    read: Callable[[slice, slice], np.ndarray]
    #: Reading full-width bands is cheaper than tiles (strips, or data already in memory).
    bands: bool
    channel_names: list[str] | None = None
    pixel_size: tuple[float, float] | None = None
    georeference: Georeference | None = None


def ingest(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    chunks: tuple[int, int] = (1024, 1024),
    overwrite: bool = False,
    progress: bool = True,
) -> ImageSource:
    """Convert one image file into an OME-Zarr 0.5 image with a mean-reduced pyramid.

    Parameters
    ----------
    input: local TIFF, BigTIFF, pyramidal TIFF / Aperio SVS (series 0, level 0), PNG or JPEG
    output: local path or fsspec URL of the new OME-Zarr group
    chunks: spatial ``(cy, cx)`` chunking of level 0, one channel per chunk
    overwrite: replace an existing output (only once the new one is complete, for local paths)
    progress: show a progress bar on stderr

    Returns
    -------
    The new image, opened with :func:`unet.io.source.open_image`: axes ``(c, y, x)``, grayscale
    as ``C == 1``, RGB(A) as 3 (4) channels, the input dtype, and the TIFF pixel size in
    micrometres where the resolution tags or the SVS description give one.

    The image group records the file it was made from (``{"unet": {"ingested": {"path",
    "size", "modified_ns"}}}``, :func:`source_record`), so that a copy is known to be stale
    once the file changes (:func:`is_current_copy`).

    Raises
    ------
    InputNotFound, UnsupportedInput, InvalidImage
    InvalidParameter: the output is the input, or holds it
    OutputExists: the output exists (without ``overwrite``), or is not an image of unet ingest
        (also with ``overwrite``: :mod:`unet.io.replace`)
    """
    if is_url(os.fspath(input)):
        raise UnsupportedInput(
            f"{input} is a URL: ingest reads local files; copy it to a local disk first"
        )
    path = Path(input).expanduser()
    if not path.exists():
        raise InputNotFound(f"input {path} does not exist: check the path")
    check_readable(path)
    if path.is_dir():
        raise UnsupportedInput(
            f"{path} is a folder, not an image file: ingest reads {SUPPORTED} files (a Zarr "
            "store needs no ingest, open it directly)"
        )
    if len(chunks) != 2 or not all(isinstance(c, int) and c >= 1 for c in chunks):
        raise InvalidParameter(f"chunks {chunks} must be two positive integers (cy, cx)")
    location = resolve_location(output)
    check_apart(location, [path])
    if check_replaceable(location, "image") and not overwrite:
        raise OutputExists(
            f"output {location} exists: choose another path or pass overwrite=True (--overwrite)"
        )
    if not is_url(location):
        remove_stale_staging(location)
    with _open_reader(path) as reader:
        staging = location if is_url(location) else staging_location(location)
        try:
            level0 = create_image(
                staging,
                reader.shape,
                reader.dtype,
                chunks,
                channel_names=reader.channel_names,
                **_calibration(reader),
                name=path.stem,
                overwrite=True,
                attributes={ATTRIBUTE: {INGESTED: source_record(path)}},
            )
            _copy(reader, level0, chunks, progress, path)
            # So that a chunk missing later is known to be lost (see unet.io.presence).
            store_every_chunk(staging, LEVEL0)
            build_pyramid(staging, reduction="mean")
            if reader.georeference is not None:
                write_georeference(staging, reader.georeference)
        except BaseException:
            if staging == location:
                remove_location(staging)
            else:
                remove_staging(staging)
            raise
    if staging != location:
        # Checked again where it is replaced: something else may have come there meanwhile.
        check_replaceable(location, "image")
        replace_location(staging, location)
    return open_image(location)


def source_record(path: str | os.PathLike[str]) -> dict[str, object]:
    """What ties an ingested image to the file it was made from: the file's real path, size and
    modification time (ns). A copy whose record differs from its file's is stale."""
    real = os.path.realpath(path)
    status = os.stat(real)
    return {"path": real, "size": status.st_size, "modified_ns": status.st_mtime_ns}


def recorded_source(location: str) -> dict[str, object] | None:
    """The :func:`source_record` an image ingested at ``location`` carries; None when there is
    no such image or it was ingested before images recorded their source."""
    import zarr

    try:
        state = zarr.open_group(store=location, mode="r").attrs.get(ATTRIBUTE)
    except (FileNotFoundError, OSError, ValueError, zarr.errors.NodeTypeValidationError):
        return None
    record = state.get(INGESTED) if isinstance(state, dict) else None
    return dict(record) if isinstance(record, dict) else None


def is_current_copy(location: str, source: str | os.PathLike[str]) -> bool:
    """Whether ``location`` holds an image ingested from ``source`` as it is now (same real path,
    size and modification time)."""
    recorded = recorded_source(location)
    try:
        return recorded is not None and recorded == source_record(source)
    except OSError:
        return False


def _copy(
    reader: _Reader, level0: zarr.Array, chunks: tuple[int, int], progress: bool, path: Path
) -> None:
    """Copy the input into level 0 block by block; each block is whole output chunks.

    Raises
    ------
    InputReadError: a block of the file cannot be read or decoded (truncated, corrupt)
    """
    from rich.console import Console
    from rich.progress import Progress

    _, height, width = reader.shape
    block_rows = min(chunks[0], height)
    block_cols = width if reader.bands else min(chunks[1] * BLOCK_CHUNKS, width)
    starts = [(r, c) for r in range(0, height, block_rows) for c in range(0, width, block_cols)]
    console = Console(stderr=True)
    with Progress(console=console, disable=not progress, transient=False) as bar:
        task = bar.add_task(f"ingest {path.name}", total=len(starts))
        for row, col in starts:
            rows = slice(row, min(row + block_rows, height))
            cols = slice(col, min(col + block_cols, width))
            try:
                block = reader.read(rows, cols)
            except Exception as error:  # tifffile, imagecodecs and rasterio each raise their own
                reason = " ".join(str(error).split()) or "no detail"
                raise InputReadError(
                    f"{path} cannot be read at rows {rows.start}-{rows.stop - 1}, columns "
                    f"{cols.start}-{cols.stop - 1} ({type(error).__name__}: {reason}): the file "
                    "is truncated or corrupt; copy or export it again"
                ) from error
            level0[:, rows, cols] = block
            bar.advance(task)


@contextlib.contextmanager
def _open_reader(path: Path) -> Iterator[_Reader]:
    with path.open("rb") as handle:
        magic = handle.read(4)
    kind = next((k for prefix, k in _MAGIC.items() if magic.startswith(prefix)), None)
    if kind is None:
        raise UnsupportedInput(
            f"{path} is not a file ingest can read: convert it to one of {SUPPORTED}"
        )
    if kind == "tiff" and is_geotiff(path):
        with open_geotiff(path) as geotiff:
            names = geotiff.georeference.band_names
            yield _checked(
                path,
                _Reader(
                    shape=geotiff.shape,
                    dtype=geotiff.dtype,
                    read=geotiff.read,
                    bands=False,
                    channel_names=list(names) if names is not None else None,
                    georeference=geotiff.georeference,
                ),
            )
    elif kind == "tiff":
        with _tiff_reader(path) as reader:
            yield _checked(path, reader)
    else:
        yield _checked(path, _decoded_reader(path, kind))


def _checked(path: Path, reader: _Reader) -> _Reader:
    if reader.dtype.kind not in "uif":
        raise InvalidImage(
            f"{path} holds {reader.dtype} pixels: convert it to an integer or float image first"
        )
    if 0 in reader.shape:
        raise InvalidImage(f"{path} is empty (shape {reader.shape}): give an image with pixels")
    return reader


@contextlib.contextmanager
def _tiff_reader(path: Path) -> Iterator[_Reader]:
    import tifffile
    import zarr

    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, ValueError, OSError) as error:
        raise UnsupportedInput(
            f"{path} could not be read as a TIFF ({error}): ingest reads {SUPPORTED}"
        ) from error
    with tif:
        if not tif.series:
            raise UnsupportedInput(f"{path} holds no image series: ingest reads {SUPPORTED}")
        series = tif.series[0]
        page = series.pages[0] if series.pages else tif.pages[0]
        order, selection, channel_axis = _tiff_axes(path, series.axes, series.shape)
        with series.aszarr(level=0) as store:
            array = zarr.open_array(store=store, mode="r")

            def read(rows: slice, cols: slice) -> np.ndarray:
                picks = {"Y": rows, "X": cols}
                index = tuple(
                    picks.get(axis, sel) for axis, sel in zip(series.axes, selection, strict=True)
                )
                block = np.asarray(array[index]).transpose(order)
                return np.ascontiguousarray(block if channel_axis is not None else block[None])

            channels = series.shape[channel_axis] if channel_axis is not None else 1
            height = series.shape[series.axes.index("Y")]
            width = series.shape[series.axes.index("X")]
            x_chunk = array.chunks[series.axes.index("X")]
            rgb = getattr(page, "photometric", None) == tifffile.PHOTOMETRIC.RGB
            yield _Reader(
                shape=(channels, height, width),
                dtype=np.dtype(series.dtype),
                read=read,
                bands=x_chunk >= width,
                channel_names=_RGB_NAMES[:channels] if rgb and channels in (3, 4) else None,
                pixel_size=_tiff_pixel_size(tif, page),
            )


def _tiff_axes(
    path: Path, axes: str, shape: tuple[int, ...]
) -> tuple[list[int], list[object], int | None]:
    """How to index and transpose tifffile's axes into ``(C, Y, X)``.

    Returns the transpose order of the indexed block, the index for every axis (``Y``/``X``
    filled in per read), and the position of the channel axis among tifffile's axes.
    """
    channel_axes = [i for i, axis in enumerate(axes) if axis in "SC" and shape[i] > 1]
    extra = [i for i, axis in enumerate(axes) if axis not in "SCYX" and shape[i] > 1]
    if extra or len(channel_axes) > 1 or "Y" not in axes or "X" not in axes:
        raise InvalidImage(
            f"{path} holds a {axes} series of shape {shape}: ingest takes single 2-D planes "
            "(grayscale, RGB(A) or channels); save one plane per file first"
        )
    channel = channel_axes[0] if channel_axes else None
    selection: list[object] = [
        slice(None) if i == channel or axis in "YX" else 0 for i, axis in enumerate(axes)
    ]
    kept = [axis for i, axis in enumerate(axes) if i == channel or axis in "YX"]
    if channel is None:
        return [kept.index("Y"), kept.index("X")], selection, None
    kept[kept.index(axes[channel])] = "C"
    return [kept.index("C"), kept.index("Y"), kept.index("X")], selection, channel


def _calibration(reader: _Reader) -> dict[str, Any]:
    """``pixel_size`` and ``unit`` of the OME scale: a georeferenced image's pixel size in its
    CRS's unit (:meth:`Georeference.calibration`), else the TIFF's in micrometres."""
    if reader.georeference is not None:
        pixel_size, unit = reader.georeference.calibration()
        return {"pixel_size": pixel_size, "unit": unit}
    return {"pixel_size": reader.pixel_size}


def _tiff_pixel_size(tif, page) -> tuple[float, float] | None:
    """Pixel size in micrometres from an SVS description or the resolution tags, if given."""
    try:
        if tif.is_svs:
            found = _SVS_MPP.search(page.description)
            return (float(found[1]), float(found[1])) if found else None
        tags = page.tags
        unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else 2
        per_unit = _MICROMETRES_PER_UNIT.get(int(unit))
        if per_unit is None or "XResolution" not in tags or "YResolution" not in tags:
            return None
        x_num, x_den = tags["XResolution"].value
        y_num, y_den = tags["YResolution"].value
        return (per_unit * y_den / y_num, per_unit * x_den / x_num)
    except (KeyError, ValueError, TypeError, ZeroDivisionError):
        return None


def _decoded_reader(path: Path, kind: str) -> _Reader:
    """PNG or JPEG decoded whole (neither format allows reading a region)."""
    import imagecodecs

    decode = imagecodecs.png_decode if kind == "png" else imagecodecs.jpeg8_decode
    try:
        pixels = decode(path.read_bytes())
    except Exception as error:  # imagecodecs raises its own error class per codec
        raise UnsupportedInput(
            f"{path} could not be decoded as {kind.upper()} ({error}): ingest reads {SUPPORTED}"
        ) from error
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    elif pixels.ndim == 3:
        pixels = np.moveaxis(pixels, -1, 0)
    else:
        raise InvalidImage(f"{path} decodes to shape {pixels.shape}: expected (Y, X) or (Y, X, C)")
    channels = pixels.shape[0]
    return _Reader(
        shape=tuple(pixels.shape),
        dtype=pixels.dtype,
        read=lambda rows, cols: np.ascontiguousarray(pixels[:, rows, cols]),
        bands=True,
        channel_names=_RGB_NAMES[:channels] if channels in (3, 4) else None,
    )
