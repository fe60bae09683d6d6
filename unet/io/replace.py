"""What an output may replace: only what this project wrote there, never an input.

Every command that writes (``unet segment``, ``ingest``, ``export``, ``train``, the demo, the
folder runs of the flows) asks here before it replaces or deletes anything, with or without
``--overwrite``:

- :func:`check_apart`: an output may not be an input, hold one (a folder around it), or lie
  inside one. Replacing such an output would delete the input.
- :func:`check_replaceable`: something already at an output's place is replaced only when it is
  of the kind the command writes there: a Zarr store carrying this project's metadata (a mask of
  ``unet segment``, its instance image, an image of ``unet ingest``), or a file in the output's
  own format (a TIFF for ``unet export``, a PNG for a preview, ...). An empty file or folder holds
  nothing to lose and may be replaced too. Anything else (a folder of other files, a store from
  another tool, a file of another format) is refused, ``--overwrite`` or not.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Literal

from unet.errors import InvalidParameter, OutputExists
from unet.io.complete import ATTRIBUTE
from unet.io.locations import (
    is_url,
    location_exists,
    read_json,
    real_location,
    resolve_location,
)

#: The kinds of things outputs are: Zarr stores this project writes, and file formats.
Kind = Literal[
    "mask",
    "instances",
    "image",
    "tiff",
    "png",
    "json",
    "gpkg",
    "parquet",
    "safetensors",
    "pam",
    "qml",
]

#: What each kind is, for messages.
DESCRIPTIONS: dict[str, str] = {
    "mask": "a mask written by unet segment",
    "instances": "an instance image written by unet segment --instances",
    "image": "an image written by unet ingest",
    "tiff": "a TIFF file",
    "png": "a PNG file",
    "json": "a JSON file",
    "gpkg": "a GeoPackage file",
    "parquet": "a Parquet file",
    "safetensors": "a safetensors checkpoint",
    "pam": "a GDAL .aux.xml sidecar",
    "qml": "a QGIS style",
}

#: The file format an output's suffix asks for.
SUFFIX_KINDS: dict[str, Kind] = {
    ".tif": "tiff",
    ".tiff": "tiff",
    ".png": "png",
    ".json": "json",
    ".geojson": "json",
    ".gpkg": "gpkg",
    ".parquet": "parquet",
    ".safetensors": "safetensors",
}

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def check_apart(
    location: str | os.PathLike[str],
    inputs: Iterable[str | os.PathLike[str]],
    *,
    what: str = "output",
    role: str = "input",
    inside_allowed: bool = False,
) -> None:
    """Refuse an output that is an input, holds one, or (unless ``inside_allowed``) lies inside
    one; symbolic links are followed as far as the paths exist. ``what`` names the output and
    ``role`` the others in the message.

    Raises
    ------
    InvalidParameter: naming the output, the input and the fix
    """
    output = _real(location)
    linked = not is_url(output) and output != resolve_location(location).rstrip("/")
    via = f" (a symbolic link leads to {output})" if linked else ""
    for item in inputs:
        source = _real(item)
        if output == source:
            raise InvalidParameter(
                f"{what} {location} is the {role} {item}{via}: writing it would replace the "
                f"{role}; choose another {what}"
            )
        if _contains(output, source):
            raise InvalidParameter(
                f"{what} {location} holds the {role} {item}{via}: replacing it would delete the "
                f"{role}; choose another {what} (a path of its own, outside the {role})"
            )
        if not inside_allowed and _contains(source, output):
            raise InvalidParameter(
                f"{what} {location} lies inside the {role} {item}{via}: choose an output outside it"
            )


def check_replaceable(
    location: str | os.PathLike[str], kind: Kind, *, what: str = "output"
) -> bool:
    """Whether something is at ``location``; raise when it is there and not of ``kind``.

    Raises
    ------
    OutputExists: something is there that this project did not write as ``kind`` (the message
        says that ``--overwrite`` does not replace it)
    """
    place = resolve_location(location)
    if not location_exists(place):
        return False
    if not is_of_kind(place, kind):
        raise OutputExists(
            f"{what} {location} exists and is not {DESCRIPTIONS[kind]}: unet replaces only its "
            "own outputs, also with --overwrite; move it away or choose another "
            f"{what}"
        )
    return True


def is_of_kind(location: str, kind: Kind) -> bool:
    """Whether the existing ``location`` (resolved path or URL) is of ``kind``, or empty."""
    if kind in ("mask", "instances", "image"):
        return _is_own_store(location, kind)
    return _is_file_of(location, kind)


def kind_of_suffix(path: str | os.PathLike[str]) -> Kind | None:
    """The file format that an output's suffix names (``.tif`` -> ``"tiff"``), or None."""
    return SUFFIX_KINDS.get(PurePosixPath(os.fspath(path)).suffix.lower())


def _is_own_store(location: str, kind: Kind) -> bool:
    if not is_url(location):
        if not os.path.isdir(location):
            return _head(location, 1) == b""  # an empty file: nothing to lose
        if not os.listdir(location):
            return True  # an empty folder: nothing to lose
    group = read_json(f"{location.rstrip('/')}/zarr.json")
    if not isinstance(group, dict):
        return False
    attributes = group.get("attributes")
    state = attributes.get(ATTRIBUTE) if isinstance(attributes, dict) else None
    state = state if isinstance(state, dict) else {}
    if kind == "mask":
        return "fingerprint" in state
    if kind == "instances":
        return "mask" in state
    if "ingested" in state:
        return True
    # Images ingested before the group recorded its source: level 0 says every chunk is stored.
    level0 = read_json(f"{location.rstrip('/')}/0/zarr.json")
    level_attributes = level0.get("attributes") if isinstance(level0, dict) else None
    level_state = level_attributes.get(ATTRIBUTE) if isinstance(level_attributes, dict) else None
    return isinstance(level_state, dict) and level_state.get("every_chunk_stored") is True


def _is_file_of(location: str, kind: Kind) -> bool:
    head = _head(location, 64)
    if head is None:
        return False
    if not head:
        return True  # an empty file: nothing to lose
    if kind == "tiff":
        return head.startswith(_TIFF_MAGIC)
    if kind == "png":
        return head.startswith(b"\x89PNG\r\n\x1a\n")
    if kind == "json":
        return head.lstrip()[:1] in (b"{", b"[")
    if kind == "gpkg":
        return head.startswith(b"SQLite format 3\x00")
    if kind == "parquet":
        return head.startswith(b"PAR1")
    if kind == "pam":  # GDAL's PAM XML (a GeoTIFF's legend beside it)
        return head.lstrip().startswith(b"<PAMDataset")
    if kind == "qml":  # a QGIS layer style
        return head.lstrip().startswith((b"<qgis", b"<!DOCTYPE qgis", b"<?xml"))
    if kind == "safetensors":
        # An 8-byte little-endian header length, then the JSON header.
        return len(head) > 8 and head[8:9] == b"{"
    return False


def _head(location: str, size: int) -> bytes | None:
    """The first ``size`` bytes of the regular file at ``location``; None for anything else."""
    if not is_url(location):
        if not os.path.isfile(location):
            return None
        try:
            with open(location, "rb") as handle:
                return handle.read(size)
        except OSError:
            return None
    import fsspec

    try:
        filesystem, path = fsspec.core.url_to_fs(location)
        if not filesystem.isfile(path):
            return None
        with filesystem.open(path, "rb") as handle:
            return handle.read(size)
    except OSError:
        return None


def _real(location: str | os.PathLike[str]) -> str:
    return real_location(location).rstrip("/") or "/"


def _contains(outer: str, inner: str) -> bool:
    """Whether ``inner`` lies strictly inside ``outer`` (both resolved, same scheme)."""
    if is_url(outer) != is_url(inner):
        return False
    if is_url(outer):
        return inner.startswith(outer.rstrip("/") + "/")
    return Path(outer) in Path(inner).parents
