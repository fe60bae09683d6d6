"""Small image and label files read whole: TIFF, PNG, or Zarr (a plain array or an OME-Zarr
group's level ``"0"``), for scores and training data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from unet.errors import InputNotFound, InvalidImage, UnsupportedInput
from unet.io.locations import check_readable

#: File name endings read by :func:`read_array`, longest first so that ``.ome.tif`` wins.
SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".png", ".zarr")


def read_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """An integer (Y, X) label image from TIFF, PNG or Zarr.

    Raises
    ------
    InvalidImage
        More than one channel, or a non-integer dtype.
    """
    array = read_array(path)
    if array.shape[0] != 1:
        raise InvalidImage(f"{path} has {array.shape[0]} channels: a label image has one")
    labels = array[0]
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if labels.dtype.kind not in "iu":
        raise InvalidImage(
            f"{path} has dtype {labels.dtype}: labels must be integers (0 = background)"
        )
    return labels


def read_array(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a whole 2-D image as (C, Y, X) in its stored dtype.

    TIFF axes come from the file (samples-per-pixel such as RGB move to the front); PNG colour
    is (Y, X, C) and moves likewise, palette PNGs give their indices; Zarr arrays are (Y, X) or
    (C, Y, X) and an OME-Zarr group is read at level ``"0"``. Leading axes of length 1 (t, z)
    are dropped. A mask of an unfinished ``unet segment`` run is refused
    (:func:`unet.io.complete.check_finished`).
    """
    path = Path(path)
    if not path.exists():
        raise InputNotFound(f"{path} does not exist")
    check_readable(path)
    suffix = file_suffix(path)
    if suffix in (".tif", ".tiff", ".ome.tif", ".ome.tiff"):
        array = _read_tiff(path)
    elif suffix == ".png":
        array = _read_png(path)
    elif suffix in (".zarr", ".ome.zarr"):
        array = _read_zarr(path)
    else:
        raise UnsupportedInput(f"{path} is not TIFF, PNG or Zarr: convert it to one of these")
    while array.ndim > 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or 0 in array.shape:
        raise InvalidImage(f"{path} has shape {array.shape}: expected (Y, X) or (C, Y, X)")
    if array.dtype.kind not in "biuf":
        raise InvalidImage(f"{path} has dtype {array.dtype}, not a real number type")
    return array


def file_suffix(path: Path) -> str:
    """The recognised ending of ``path`` (``.ome.tif``, ``.png``, ...), or its last suffix."""
    name = path.name.lower()
    return next((s for s in SUFFIXES if name.endswith(s)), path.suffix.lower())


def file_stem(path: Path) -> str:
    """``path``'s name without the recognised ending: ``a.ome.tif`` -> ``a``."""
    return path.name[: len(path.name) - len(file_suffix(path))]


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        array, axes = series.asarray(), series.axes
    if axes.endswith("S") and array.ndim == 3:
        array = np.moveaxis(array, -1, 0)
    return array


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image)
    if array.ndim == 3:
        array = np.moveaxis(array, -1, 0)
    return array


def _read_zarr(path: Path) -> np.ndarray:
    """(C, Y, X) of an OME-Zarr image (its largest level, axes by name) or of an array whose
    dimension names name y and x; other arrays (and groups with a level ``"0"`` but no OME
    metadata) as stored."""
    import zarr

    from unet.io.axes import COLUMNS, ROWS, array_axes, select_region
    from unet.io.complete import check_finished
    from unet.io.source import open_image

    check_finished(str(path), reader="use it")
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as error:  # zarr raises several types for a directory that is no store
        raise UnsupportedInput(f"{path} is not a readable Zarr store ({error})") from None
    attributes = node.attrs.asdict()
    if isinstance(node, zarr.Group) and "multiscales" in attributes.get("ome", attributes):
        source = open_image(str(path))
        return source.read(slice(None), slice(None))
    if isinstance(node, zarr.Group):
        if "0" not in node:
            raise UnsupportedInput(f"{path} is a Zarr group without a level '0' array")
        node = node["0"]
    names = [str(name).lower() for name in getattr(node.metadata, "dimension_names", None) or []]
    if ROWS in names and COLUMNS in names:
        axes = array_axes(str(path), node, channels_last=False)
        shape = dict(zip(axes, node.shape, strict=True))
        return select_region(node, axes, slice(0, shape[ROWS]), slice(0, shape[COLUMNS]))
    return np.asarray(node[...])
