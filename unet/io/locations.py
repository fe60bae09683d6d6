"""Locations: local paths and fsspec URLs (``s3://``, ``memory://``, ...), resolved, tested,
removed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass


def is_url(location: str) -> bool:
    """Whether ``location`` is an fsspec URL (``scheme://...``) rather than a local path."""
    return "://" in location and not location.startswith("file://")


def resolve_location(location: str | os.PathLike[str]) -> str:
    """A local path made absolute (``~`` and ``file://`` handled); a URL unchanged."""
    text = os.fspath(location)
    if is_url(text):
        return text.rstrip("/")
    text = text.removeprefix("file://")
    return str(Path(text).expanduser().absolute())


def real_location(location: str | os.PathLike[str]) -> str:
    """:func:`resolve_location` with every symbolic link of a local path followed, as far as the
    path exists: where the bytes would really go. A URL unchanged."""
    resolved = resolve_location(location)
    return resolved if is_url(resolved) else os.path.realpath(resolved)


def check_readable(path: str | os.PathLike[str], what: str = "input") -> None:
    """Refuse a local path that exists but is neither a regular file nor a folder (a FIFO,
    socket or device): opening one can block for ever, or read without end.

    Raises
    ------
    UnsupportedInput: naming the path and what it is
    """
    import stat

    from unet.errors import UnsupportedInput

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing or unreadable: the caller's own error says so
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket or device"
        raise UnsupportedInput(
            f"{what} {path} is {kind}, not a regular file: give an image file or folder"
        )


def location_exists(location: str) -> bool:
    """Whether anything (file, folder, Zarr node) exists at a resolved path or URL."""
    if not is_url(location):
        return os.path.lexists(location)
    import fsspec

    filesystem, path = fsspec.core.url_to_fs(location)
    return bool(filesystem.exists(path))


def remove_location(location: str) -> None:
    """Delete whatever exists at a resolved path or URL (a store, a folder or a file)."""
    if not is_url(location):
        import shutil

        if os.path.isdir(location) and not os.path.islink(location):
            shutil.rmtree(location)
        elif os.path.lexists(location):
            os.unlink(location)
        return
    import fsspec

    filesystem, path = fsspec.core.url_to_fs(location)
    if filesystem.exists(path):
        filesystem.rm(path, recursive=True)


def read_json(location: str) -> object:
    """The JSON document at a resolved path or URL (a ``zarr.json``); None when it is absent or
    not JSON."""
    import json

    try:
        if is_url(location):
            import fsspec

            with fsspec.open(location, "rb") as handle:
                text = handle.read()
        else:
            text = Path(location).read_bytes()
        return json.loads(text)
    except (OSError, ValueError):
        return None
