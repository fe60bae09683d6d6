"""Where a mask's instance image and object table go, and how a mask records them.

The one place that decides it (:func:`instances_location`, :func:`objects_location`). A
standalone mask ``masks/a.zarr`` gets the sibling stores::

    masks/a.zarr                 the class mask (OME-Zarr image-label, uint8)
    masks/a-instances.zarr       the instance image (OME-Zarr image-label, uint32 or uint64)
    masks/a-objects.parquet      the object table

A mask inside its image (``unet segment IMAGE.zarr --labels NAME``) gets its instance image as
the label image ``IMAGE.zarr/labels/NAME-instances`` (listed in the image's ``labels`` group
with the mask) and its table beside the image, ``IMAGE.NAME-objects.parquet``, as its preview.

A sibling rather than a group inside ``a.zarr``: the mask is itself an image-label group, and
OME-NGFF readers (napari-ome-zarr, ome-zarr-py, the OME-Zarr validator) look for ``labels/``
inside an *image*, never inside a label image, so an instance image nested in the mask would be
found by none of them; a store of its own opens in any of them by its path. The mask's ``unet``
attribute records both locations (relative to the mask) with the object counts, so that
``unet export --instances`` and readers of the mask find them.
"""

from __future__ import annotations

import os
import posixpath
from typing import Any

from unet.io.locations import is_url

#: The key of the mask's ``unet`` attribute that records a finished instance pass.
RECORD = "instances"


def instances_location(output: str, image: str | None = None) -> str:
    """Where the instance image of the mask at ``output`` goes:
    ``masks/a.zarr`` -> ``masks/a-instances.zarr`` (``out`` -> ``out-instances``); for a mask
    inside its ``image``, ``IMAGE.zarr/labels/NAME`` -> ``IMAGE.zarr/labels/NAME-instances``."""
    stem, suffix = _split(output)
    return f"{stem}-instances{suffix}"


def objects_location(output: str, image: str | None = None) -> str:
    """Where the object table of the mask at ``output`` goes:
    ``masks/a.zarr`` -> ``masks/a-objects.parquet``; for a mask inside its ``image``
    (``IMAGE.zarr/labels/NAME``), beside the image: ``IMAGE.NAME-objects.parquet``."""
    if image is not None:
        name = str(output).rstrip("/").rsplit("/", 1)[-1]
        return f"{str(image).rstrip('/').removesuffix('.zarr')}.{name}-objects.parquet"
    stem, _ = _split(output)
    return f"{stem}-objects.parquet"


def relative_to(mask: str, location: str) -> str:
    """``location`` as a path relative to the mask's store (``../a-instances.zarr``)."""
    if is_url(mask):
        return posixpath.relpath(location.split("://", 1)[1], mask.split("://", 1)[1])
    return os.path.relpath(os.path.abspath(location), os.path.abspath(mask))


def resolve_from(mask: str, relative: str) -> str:
    """The location of ``relative`` (as :func:`relative_to` wrote it) seen from the mask."""
    if is_url(mask):
        scheme, path = mask.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(path, relative))}"
    return os.path.normpath(os.path.join(os.path.abspath(mask), relative))


def recorded_instances(attributes: dict[str, Any]) -> dict[str, Any] | None:
    """The record of a finished instance pass in a mask's group attributes; None without one.

    Keys: ``image`` and ``table`` (relative to the mask), ``objects`` (the total),
    ``objects_per_class`` (class name -> count, background left out), ``dtype``.
    """
    from unet.engine.ledger import ATTRIBUTE

    state = attributes.get(ATTRIBUTE)
    record = state.get(RECORD) if isinstance(state, dict) else None
    return dict(record) if isinstance(record, dict) else None


def _split(output: str) -> tuple[str, str]:
    base = str(output).rstrip("/")
    if base.endswith(".zarr"):
        return base[: -len(".zarr")], ".zarr"
    return base, ""
