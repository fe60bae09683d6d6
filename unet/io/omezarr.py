"""Write OME-Zarr 0.5 (NGFF on Zarr v3) image and label-image groups.

Layout written here::

    <url>/zarr.json        group; attributes {"ome": {"version": "0.5", "multiscales": [...]}}
    <url>/0/               level 0, blosc-zstd, chunks (1, cy, cx) for (c, y, x) or (cy, cx)
    <url>/1/, <url>/2/ ... pyramid levels added by :func:`unet.io.pyramid.build_pyramid`
    <url>/labels/zarr.json  an image's labels group: {"ome": {"version": "0.5", "labels": [...]}}
    <url>/labels/<name>/    a label image of that image (:func:`create_label_image`)

Scales are in micrometres when a pixel size is given, in pixels otherwise; the channel axis has
scale 1 and each pyramid level multiplies the image axes' scale by its downsampling factor.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unet.errors import InvalidImage, InvalidParameter, OutputExists
from unet.io.locations import location_exists, remove_location, resolve_location

if TYPE_CHECKING:
    import zarr

NGFF_VERSION = "0.5"
LEVEL0 = "0"
#: The group of an image that holds its label images.
LABELS_GROUP = "labels"
_AXIS_LAYOUTS = (("c", "y", "x"), ("y", "x"))
_UNIT = "micrometer"
#: The no-data label of a uint8 mask whose input has no-data: a value no class uses (a mask holds
#: at most 255 classes then), so that class 0 stays a class and readers can tell the two apart.
MASK_NODATA = 255
#: The ``class`` that a mask's ``image-label`` properties give its no-data label.
NODATA_NAME = "no data"
_CHANNEL_COLOURS = {"red": "FF0000", "green": "00FF00", "blue": "0000FF"}


def create_image(
    url: str | os.PathLike[str],
    shape: tuple[int, ...],
    dtype: Any,
    chunks: tuple[int, int] = (1024, 1024),
    *,
    axes: tuple[str, ...] = ("c", "y", "x"),
    channel_names: list[str] | None = None,
    pixel_size: tuple[float, float] | None = None,
    unit: str | None = _UNIT,
    name: str | None = None,
    overwrite: bool = False,
    compression: tuple[str, int, str] | None = None,
    attributes: dict[str, Any] | None = None,
    fill_value: int | float = 0,
) -> zarr.Array:
    """Create an OME-Zarr 0.5 image group with an empty level ``"0"`` to be filled.

    Parameters
    ----------
    url: local path or fsspec URL of the new group
    shape: ``(C, Y, X)`` for axes ``("c", "y", "x")``, ``(Y, X)`` for ``("y", "x")``
    dtype: any integer or float numpy dtype
    chunks: spatial ``(cy, cx)``; clipped to the image, one channel per chunk
    channel_names: one label per channel, stored as ``omero`` channel metadata
    pixel_size: ``(y, x)`` in ``unit``, the level-0 scale
    unit: the OME unit of ``pixel_size`` (micrometres unless given; None for none)
    name: the multiscale's name (defaults to the store's base name)
    overwrite: replace whatever exists at ``url``
    compression: Blosc ``(cname, clevel, shuffle)``; default ``("zstd", 5, "bitshuffle")``
        for 1-byte types and ``("zstd", 5, "shuffle")`` for others
    attributes: more group attributes, written with the OME ones in the group's first metadata
        write (entries of an ``"ome"`` key join the OME metadata)
    fill_value: what an unwritten chunk reads as (Zarr stores no chunk equal to it)

    Returns
    -------
    The level-0 ``zarr.Array``, filled with ``fill_value``.

    Raises
    ------
    OutputExists
        ``url`` exists and ``overwrite`` is false.
    InvalidParameter
        Bad axes, shape, chunks, channel names or pixel size.
    """
    import zarr
    from zarr.codecs import BloscCodec

    axes = tuple(axes)
    if axes not in _AXIS_LAYOUTS:
        raise InvalidParameter(f"axes {axes} are not supported: use ('c', 'y', 'x') or ('y', 'x')")
    shape = tuple(int(n) for n in shape)
    if len(shape) != len(axes) or min(shape) < 1:
        raise InvalidParameter(
            f"shape {shape} does not fit axes {axes}: give {len(axes)} lengths, each at least 1"
        )
    numpy_dtype = _check_dtype(dtype)
    chunk_shape = _chunk_shape(shape, chunks)
    channels = shape[0] if axes[0] == "c" else 1
    if channel_names is not None and (axes[0] != "c" or len(channel_names) != channels):
        raise InvalidParameter(
            f"{len(channel_names)} channel names given for {channels} channels: give one per channel"
        )
    location = resolve_location(url)
    multiscale: dict[str, Any] = {
        "name": name if name is not None else _base_name(location),
        "axes": [_axis(axis, unit if pixel_size is not None else None) for axis in axes],
        "datasets": [_dataset(LEVEL0, _level_scale(axes, pixel_size, 1))],
    }
    ome: dict[str, Any] = {"version": NGFF_VERSION, "multiscales": [multiscale]}
    if channel_names is not None:
        ome["omero"] = {"channels": [_omero_channel(n, numpy_dtype) for n in channel_names]}
    extra = dict(attributes or {})
    ome.update(extra.pop("ome", {}))
    _make_room(location, overwrite)
    group = zarr.create_group(store=location, zarr_format=3, attributes={"ome": ome, **extra})
    cname, clevel, shuffle = compression or (
        "zstd",
        5,
        "bitshuffle" if numpy_dtype.itemsize == 1 else "shuffle",
    )
    return group.create_array(
        LEVEL0,
        shape=shape,
        dtype=numpy_dtype,
        chunks=chunk_shape,
        compressors=[BloscCodec(cname=cname, clevel=clevel, shuffle=shuffle)],
        fill_value=fill_value,
        dimension_names=axes,
    )


#: Blosc compressor, level and shuffle of masks (the chunk tasks write them). Labels use the low
#: bits of each byte only, so bitshuffle leaves long runs of zero bits. lz4 encodes a 1024^2
#: nuclei mask in about half the CPU of zstd level 1 (0.9 against 1.5 ms), at about twice the
#: bytes (67 against 32 KiB, still a sixteenth of the pixels), and decodes faster for viewers:
#: the chunk tasks' encodes are on a GPU run's critical path (benchmarks/README.md).
LABEL_COMPRESSION = ("lz4", 1, "bitshuffle")


def create_label_image(
    url: str | os.PathLike[str],
    shape: tuple[int, int],
    chunks: tuple[int, int],
    *,
    class_names: list[str],
    colours: list[tuple[int, int, int]],
    pixel_size: tuple[float, float] | None = None,
    unit: str | None = _UNIT,
    name: str | None = None,
    source: str | None = None,
    overwrite: bool = False,
    attributes: dict[str, Any] | None = None,
    nodata: int | None = None,
) -> zarr.Array:
    """Create an OME-Zarr 0.5 label image: a uint8 ``(Y, X)`` mask with ``image-label`` metadata.

    Label value ``i`` is class ``class_names[i]`` shown in ``colours[i]``; label 0 (background)
    is transparent. ``pixel_size`` and ``unit`` calibrate it as the labelled image is;
    ``source`` (``image-label.source.image``) is where that image lies, relative to this group
    (``"../../"`` inside the image's ``labels`` group). ``attributes``: more group attributes,
    written with the OME ones in the group's first metadata write. ``nodata``: the label of
    pixels without data (:data:`MASK_NODATA`), a value no class uses; it is the arrays' fill
    value, so chunks of no-data only are never stored, and ``image-label`` lists it, transparent
    and named :data:`NODATA_NAME`. Returns the level-0 array, filled with ``nodata`` (0
    without).
    """
    most = 256 if nodata is None else 255
    if not 1 <= len(class_names) <= most or len(colours) != len(class_names):
        raise InvalidParameter(
            f"{len(class_names)} class names and {len(colours)} colours given: give one colour "
            f"per class, at most {most} classes for a uint8 mask"
            + ("" if nodata is None else " with a no-data label")
        )
    if nodata is not None and not len(class_names) <= nodata <= 255:
        raise InvalidParameter(
            f"no-data label {nodata} is a class or not a uint8 value: use {MASK_NODATA}"
        )
    for colour in colours:
        if len(colour) != 3 or not all(
            isinstance(v, int | np.integer) and 0 <= v <= 255 for v in colour
        ):
            raise InvalidParameter(f"colour {colour} is not an RGB triple of 0..255 integers")
    image_label: dict[str, Any] = {
        "version": NGFF_VERSION,
        "colors": [
            {"label-value": value, "rgba": [*map(int, colour), 0 if value == 0 else 255]}
            for value, colour in enumerate(colours)
        ],
        "properties": [
            {"label-value": value, "class": class_name}
            for value, class_name in enumerate(class_names)
        ],
    }
    if nodata is not None:
        # Readers that colour and name labels (napari-ome-zarr) show no-data as nothing, and
        # say what it is where they list the labels' properties.
        image_label["colors"].append({"label-value": nodata, "rgba": [0, 0, 0, 0]})
        image_label["properties"].append({"label-value": nodata, "class": NODATA_NAME})
    if source is not None:
        image_label["source"] = {"image": source}
    extra = copy.deepcopy(attributes or {})
    extra.setdefault("ome", {})["image-label"] = image_label
    return create_image(
        url,
        tuple(shape),
        np.uint8,
        chunks,
        axes=("y", "x"),
        pixel_size=pixel_size,
        unit=unit,
        name=name,
        overwrite=overwrite,
        compression=LABEL_COMPRESSION,
        attributes=extra,
        fill_value=0 if nodata is None else nodata,
    )


def set_label_listed(image: str | os.PathLike[str], name: str, listed: bool) -> None:
    """List (or unlist) the label image ``name`` in the ``labels`` group of the OME-Zarr image
    at ``image``, creating the group when missing and keeping the other names.

    A label image is listed once it is complete, so that readers never show a half-written one.
    """
    import zarr

    location = f"{resolve_location(image).rstrip('/')}/{LABELS_GROUP}"
    try:
        group = zarr.open_group(store=location, mode="r+")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        group = zarr.create_group(store=location, zarr_format=3)
    ome = copy.deepcopy(group.attrs.asdict().get("ome") or {})
    names = [n for n in ome.get("labels") or [] if n != name]
    if listed:
        names.append(name)
    if ome.get("labels") == names and ome.get("version") == NGFF_VERSION:
        return
    ome["version"] = NGFF_VERSION
    ome["labels"] = names
    group.update_attributes({"ome": ome})


def image_calibration(
    url: str | os.PathLike[str],
) -> tuple[tuple[float, float] | None, str | None]:
    """The level-0 ``(y, x)`` scale of an OME-Zarr image and the unit of its ``x`` axis (None
    where it names none); ``(None, None)`` for a plain array or an image in pixels.

    A georeferenced image (GeoZarr attributes) gives its pixel size in its CRS's unit
    (:meth:`unet.io.geo.Georeference.calibration`: metres for a projected CRS), also when it
    was ingested before its OME scale said so: a mask segmented from it is calibrated as the
    map is.
    """
    import zarr

    from unet.io.geo import Georeference

    try:
        node = zarr.open(store=resolve_location(url), mode="r")
    except (FileNotFoundError, ValueError, KeyError):
        return None, None
    attributes = node.attrs.asdict()
    multiscales = attributes.get("ome", {}).get("multiscales") or []
    if not isinstance(node, zarr.Group) or not multiscales or not multiscales[0].get("datasets"):
        return None, None
    georeference = Georeference.from_attributes(attributes)
    if georeference is not None:
        return georeference.calibration()
    axes = multiscales[0].get("axes") or []
    names = [axis.get("name") if isinstance(axis, dict) else axis for axis in axes]
    if "y" not in names or "x" not in names:
        return None, None
    scale = _first_scale(multiscales[0]["datasets"][0], len(names))
    unit = next((a.get("unit") for a in axes if isinstance(a, dict) and a.get("name") == "x"), None)
    pixel_size = (scale[names.index("y")], scale[names.index("x")])
    if unit is None and pixel_size == (1.0, 1.0):
        return None, None
    return pixel_size, unit


def set_multiscales(
    group: zarr.Group | str | os.PathLike[str],
    paths: list[str],
    factors: list[int],
    *,
    method: str | None = None,
) -> None:
    """Rewrite the multiscales datasets of an OME-Zarr 0.5 group after its pyramid is built.

    Parameters
    ----------
    group: the image group, open for writing, or its path / URL
    paths: level array paths, level 0 first
    factors: each level's downsampling factor of the image axes, 1 first, increasing
    method: the reduction used (``"mean"``, ``"nearest"``), recorded as the multiscale ``type``

    The level-0 scale is kept; level ``k`` gets it times ``factors[k]`` on the image axes.
    """
    import zarr

    if not isinstance(group, zarr.Group):
        group = zarr.open_group(store=resolve_location(group), mode="r+")
    if len(paths) != len(factors) or not paths or factors[0] != 1:
        raise InvalidParameter(
            f"levels {paths} with factors {factors}: give one factor per level, the first 1"
        )
    if any(b <= a for a, b in zip(factors, factors[1:], strict=False)):
        raise InvalidParameter(f"pyramid factors {factors} must increase level by level")
    ome = copy.deepcopy(group.attrs.asdict().get("ome"))
    if not ome or not ome.get("multiscales"):
        raise InvalidImage(
            f"{group.store_path} has no OME-Zarr 0.5 multiscales metadata: create it with "
            "unet.io.omezarr.create_image"
        )
    multiscale = ome["multiscales"][0]
    space = [axis.get("type") == "space" for axis in multiscale["axes"]]
    base = _first_scale(multiscale["datasets"][0], len(space))
    multiscale["datasets"] = [
        _dataset(
            path, [s * factor if is_space else s for s, is_space in zip(base, space, strict=True)]
        )
        for path, factor in zip(paths, factors, strict=True)
    ]
    if method is not None:
        multiscale["type"] = method
    group.update_attributes({"ome": ome})


def _make_room(location: str, overwrite: bool) -> None:
    if not location_exists(location):
        return
    if not overwrite:
        raise OutputExists(
            f"output {location} exists: choose another path or pass overwrite=True (--overwrite)"
        )
    remove_location(location)


def _check_dtype(dtype: Any) -> np.dtype:
    try:
        numpy_dtype = np.dtype(dtype)
    except TypeError as error:
        raise InvalidParameter(f"dtype {dtype!r} is not a numpy dtype") from error
    if numpy_dtype.kind not in "uif":
        raise InvalidParameter(
            f"dtype {numpy_dtype} cannot hold an image: use an integer or float dtype"
        )
    return numpy_dtype


def _chunk_shape(shape: tuple[int, ...], chunks: tuple[int, int]) -> tuple[int, ...]:
    if len(chunks) != 2 or not all(isinstance(c, int | np.integer) and c >= 1 for c in chunks):
        raise InvalidParameter(f"chunks {chunks} must be two positive integers (cy, cx)")
    spatial = (min(int(chunks[0]), shape[-2]), min(int(chunks[1]), shape[-1]))
    return (1, *spatial) if len(shape) == 3 else spatial


def _base_name(location: str) -> str:
    name = Path(location.rstrip("/")).name
    return name.removesuffix(".zarr") or "image"


def _axis(name: str, unit: str | None) -> dict[str, str]:
    if name == "c":
        return {"name": "c", "type": "channel"}
    axis = {"name": name, "type": "space"}
    if unit is not None:
        axis["unit"] = unit
    return axis


def _level_scale(
    axes: tuple[str, ...], pixel_size: tuple[float, float] | None, factor: int
) -> list[float]:
    if pixel_size is not None and (len(pixel_size) != 2 or min(pixel_size) <= 0):
        raise InvalidParameter(f"pixel size {pixel_size} must be two positive numbers (y, x)")
    size_y, size_x = pixel_size if pixel_size is not None else (1.0, 1.0)
    spatial = [float(size_y) * factor, float(size_x) * factor]
    return [1.0, *spatial] if axes[0] == "c" else spatial


def _dataset(path: str, scale: list[float]) -> dict[str, Any]:
    return {"path": path, "coordinateTransformations": [{"type": "scale", "scale": scale}]}


def _first_scale(dataset: dict[str, Any], ndim: int) -> list[float]:
    for transform in dataset.get("coordinateTransformations", []):
        if transform.get("type") == "scale" and len(transform.get("scale", [])) == ndim:
            return [float(s) for s in transform["scale"]]
    return [1.0] * ndim


def _omero_channel(label: str, dtype: np.dtype) -> dict[str, Any]:
    if dtype.kind in "ui":
        low, high = float(np.iinfo(dtype).min), float(np.iinfo(dtype).max)
    else:
        low, high = 0.0, 1.0
    return {
        "label": str(label),
        "active": True,
        "color": _CHANNEL_COLOURS.get(str(label).lower(), "FFFFFF"),
        "window": {"min": low, "max": high, "start": low, "end": high},
    }
