"""A finished label mask opened for export: level 0, class names and colours, georeferencing;
and the checks every exported file gets before anything is written."""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unet.errors import InvalidImage, InvalidParameter, OutputExists

if TYPE_CHECKING:
    from unet.io.geo import Georeference
    from unet.io.source import ImageSource


@dataclass(frozen=True)
class LabelMask:
    """A label mask opened for export.

    Attributes
    ----------
    source: the level exported (level 0 unless asked), ``(1, Y, X)`` integer labels
    georeference: CRS and transform of that level and the mask's nodata, copied from the
        segmented image, if any
    class_names: name of each label value (index = value), from the image-label metadata
    colours: RGBA per label value, from the image-label metadata
    nodata: the label of no-data pixels (255 for a run with no-data), None when there is none;
        it is no class
    factor: how many level-0 pixels one pixel of ``source`` spans per side
    """

    source: ImageSource
    georeference: Georeference | None
    class_names: list[str]
    colours: dict[int, tuple[int, int, int, int]]
    nodata: int | None = None
    factor: int = 1

    @property
    def transform(self) -> tuple[float, float, float, float, float, float]:
        """Affine ``(a, b, c, d, e, f)`` from ``source``'s pixel corners to the output's
        coordinates: map coordinates, or level-0 pixels without georeferencing."""
        if self.georeference is not None:
            return self.georeference.transform
        return (float(self.factor), 0.0, 0.0, 0.0, float(self.factor), 0.0)


def open_mask(url: str | os.PathLike[str], *, level: int = 0) -> LabelMask:
    """Open a label mask and its class names, colours, no-data label and georeferencing.

    ``level``: the pyramid level to read (0 the full resolution); its georeference is level 0's
    scaled by the level's downsampling factor.

    Raises
    ------
    InvalidImage
        Not a single-channel integer array, or an unfinished ``unet segment`` run.
    InvalidParameter
        The mask has no such level.
    """
    import zarr

    from unet.engine.ledger import ATTRIBUTE
    from unet.io.complete import check_finished
    from unet.io.geo import read_georeference
    from unet.io.source import open_image

    source = open_image(url)
    if source.shape[0] != 1 or np.dtype(source.dtype).kind not in "ui":
        raise InvalidImage(
            f"{source.url} holds {source.shape[0]} channel(s) of {source.dtype}, not a label "
            "mask: give the output of unet segment"
        )
    attributes: dict[str, Any] = {}
    if source.array_path:
        attributes = zarr.open_group(store=source.url, mode="r").attrs.asdict()
    check_finished(source.url, reader="export")
    run = attributes.get(ATTRIBUTE)
    image_label = attributes.get("ome", {}).get("image-label", {})
    names = {
        int(item["label-value"]): str(item["class"])
        for item in image_label.get("properties", [])
        if "label-value" in item and "class" in item
    }
    colours = {
        int(item["label-value"]): tuple(int(v) for v in item["rgba"])
        for item in image_label.get("colors", [])
        if "label-value" in item and len(item.get("rgba", [])) == 4
    }
    georeference = read_georeference(source)
    nodata = _nodata(run, georeference)
    if nodata:  # 255's entry names no class (masks written before declared 0, a class)
        names.pop(nodata, None)
    count = max(names, default=-1) + 1
    source, factor = _level(source, attributes, level)
    if georeference is not None and factor != 1:
        georeference = georeference.scaled(factor)
    return LabelMask(
        source=source,
        georeference=georeference,
        class_names=[names.get(v, str(v)) for v in range(count)],
        colours=colours,
        nodata=nodata,
        factor=factor,
    )


def _nodata(run: Any, georeference: Georeference | None) -> int | None:
    """The mask's no-data label: the run's record (``unet.nodata``) where it holds one, else the
    georeferencing's ``nodata`` (masks written before the record, and label images of others)."""
    if isinstance(run, dict) and "nodata" in run:
        value = run["nodata"]
    else:
        value = georeference.nodata if georeference is not None else None
    return None if value is None else int(value)


def _level(source: ImageSource, attributes: dict[str, Any], level: int) -> tuple[ImageSource, int]:
    """Level ``level`` of the mask and its downsampling factor from level 0."""
    from unet.io.source import open_image

    if level == 0:
        return source, 1
    levels = source.level_paths
    if not isinstance(level, int) or not 0 <= level < len(levels):
        raise InvalidParameter(
            f"{source.url} has {len(levels) or 1} level(s): give --level 0.."
            f"{max(len(levels) - 1, 0)}"
        )
    datasets = attributes.get("ome", {}).get("multiscales", [{}])[0].get("datasets", [])
    scales = [_x_scale(d) for d in datasets[: level + 1]]
    factor = 2**level
    if len(scales) == level + 1 and scales[0] and scales[level]:
        factor = round(scales[level] / scales[0])
    return open_image(f"{source.url.rstrip('/')}/{levels[level]}"), factor


def _x_scale(dataset: dict[str, Any]) -> float | None:
    for transform in dataset.get("coordinateTransformations", []):
        if transform.get("type") == "scale" and transform.get("scale"):
            return float(transform["scale"][-1])
    return None


def open_instances(mask: LabelMask) -> ImageSource:
    """The instance image that ``unet segment --instances`` wrote for ``mask``.

    Raises
    ------
    InvalidImage
        The mask has no finished instance pass, or the instance image there belongs to another
        run of the mask (written before the mask was replaced).
    """
    import zarr

    from unet.engine.instances import recorded_instances, resolve_from
    from unet.engine.ledger import ATTRIBUTE
    from unet.io.source import open_image

    source = mask.source
    attributes = zarr.open_group(store=source.url, mode="r").attrs.asdict()
    record = recorded_instances(attributes) if source.array_path else None
    if record is None:
        raise InvalidImage(
            f"{source.url} has no instance labels: run unet segment with --instances "
            "(the same command, with --overwrite when it finished without them)"
        )
    location = resolve_from(source.url, record["image"])
    instances = open_image(location)
    stored = zarr.open_group(store=instances.url, mode="r").attrs.get(ATTRIBUTE, {})
    if stored.get("digest") != attributes[ATTRIBUTE].get("digest"):
        raise InvalidImage(
            f"the instance image {location} belongs to another run than the mask {source.url}: "
            "rerun the mask's unet segment command with --instances"
        )
    return instances


def resolve_label(mask: LabelMask, label: str | int) -> int:
    """The label value of a class given by name or value (``"building"``, ``3`` or ``"3"``)."""
    if isinstance(label, str) and label in mask.class_names:
        return mask.class_names.index(label)
    value = None
    with contextlib.suppress(ValueError):
        value = int(label)
    if value is not None and value == mask.nodata:
        raise InvalidParameter(
            f"value {value} is this mask's no-data label, not a class: give a class name or value"
        )
    if value is not None and 0 <= value <= np.iinfo(np.dtype(mask.source.dtype)).max:
        return value
    known = ", ".join(f"{v} {n}" for v, n in enumerate(mask.class_names)) or "none stored"
    raise InvalidParameter(f"class {label!r} is not in this mask: give a name or value ({known})")


def check_target(target: Path, overwrite: bool, mask: LabelMask) -> None:
    """Refuse, before anything is written, a file ``target`` exported from ``mask`` that would
    replace the mask (or lie in it), something that is not a file of its own format, or an
    existing file without ``overwrite`` (:mod:`unet.io.replace`)."""
    from unet.io.replace import check_apart, check_replaceable, kind_of_suffix

    if "://" in str(target):
        raise InvalidParameter(f"{target} is a URL: export writes local files")
    check_apart(target, [mask.source.url])
    kind = kind_of_suffix(target)
    if kind not in ("gpkg", "json", "parquet"):
        kind = "tiff"  # any other name gets the GeoTIFF
    if check_replaceable(target, kind) and not overwrite:
        raise OutputExists(
            f"output {target} exists: choose another path or pass overwrite=True (--overwrite)"
        )
    if kind == "tiff":  # its legend files beside it: only ever this project's own
        sidecar, style = target.with_name(target.name + ".aux.xml"), target.with_suffix(".qml")
        check_replaceable(sidecar, "pam", what="legend file")
        check_replaceable(style, "qml", what="legend file")
    if not target.parent.is_dir():
        raise InvalidParameter(f"folder {target.parent} does not exist: create it first")


def sibling(target: Path, purpose: str) -> Path:
    return target.with_name(f".{target.stem}.{purpose}-{uuid.uuid4().hex[:8]}{target.suffix}")
