"""One run per output: a lock file next to the output store.

``<output>.lock`` is created exclusively (``O_CREAT | O_EXCL``: atomic on local filesystems and
NFSv3+) before a run touches its output and removed when the run ends, so a second run on the same
output is refused instead of writing into it. The lock sits beside the store rather than inside it
so that ``--overwrite`` can delete and recreate the store while the lock is held.

The lock names its holder (pid, host, start time). A lock whose process no longer exists on this
host is stale and taken over, so a killed run never blocks its rerun; a lock from another host is
never guessed stale (remove it by hand once that run is gone). Object stores have no exclusive
create: for URLs the lock is written when absent and read back, which catches all but starts within
the same fraction of a second.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any

from unet.errors import OutputLocked, OutputWriteError
from unet.io.locations import is_url, resolve_location
from unet.io.staging import process_alive

LOCK_SUFFIX = ".lock"


def lock_location(output: str) -> str:
    """Where the lock of ``output`` lives: ``<output>.lock`` (resolved path or URL)."""
    return resolve_location(output).rstrip("/") + LOCK_SUFFIX


@contextlib.contextmanager
def output_lock(output: str) -> Iterator[None]:
    """Hold the lock of ``output`` for the duration of the block.

    Raises
    ------
    OutputLocked: a live run holds it
    OutputWriteError: the lock cannot be created (read-only location, missing permissions)
    """
    location = lock_location(output)
    holder = _holder()
    if is_url(location):
        _acquire_url(output, location, holder)
    else:
        _acquire_local(output, location, holder)
    try:
        yield
    finally:
        _release(location, holder["token"])


def check_unlocked(output: str) -> None:
    """Raise :class:`OutputLocked` when a live run holds ``output``; takes nothing."""
    location = lock_location(output)
    current = _read(location)
    if current is not None and not _is_stale(current):
        raise _locked(output, location, current)


def _holder() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "token": uuid.uuid4().hex,
    }


def _acquire_local(output: str, location: str, holder: dict[str, Any]) -> None:
    content = json.dumps(holder).encode()
    try:
        os.makedirs(os.path.dirname(location), exist_ok=True)
        for _ in range(3):
            try:
                descriptor = os.open(location, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                current = _read(location)
                if current is not None:  # None: released meanwhile, try again
                    if not _is_stale(current):
                        raise _locked(output, location, current) from None
                    _remove_stale(output, location, current)
                continue
            with os.fdopen(descriptor, "wb") as file:
                file.write(content)
            return
    except OSError as error:
        raise OutputWriteError(
            f"cannot create {location} ({type(error).__name__}: {error.strerror or error}): "
            "choose a writable output location or fix its permissions"
        ) from None
    raise _locked(output, location, _read(location))


def _remove_stale(output: str, location: str, seen: dict[str, Any]) -> None:
    """Delete the stale lock ``seen``, unless another run replaced it meanwhile."""
    aside = f"{location}.{os.getpid()}.stale"
    try:
        os.rename(location, aside)  # atomic: of two runs taking over, one moves it
    except FileNotFoundError:
        return
    moved = _read(aside)
    if moved == seen:
        os.unlink(aside)
        return
    # Another run took the stale lock over between our read and our rename: give it back.
    with contextlib.suppress(FileExistsError):
        os.link(aside, location)
    os.unlink(aside)
    raise _locked(output, location, moved)


def _acquire_url(output: str, location: str, holder: dict[str, Any]) -> None:
    import fsspec

    filesystem, path = fsspec.core.url_to_fs(location)
    current = _read(location)
    if current is not None:
        if not _is_stale(current):
            raise _locked(output, location, current)
        filesystem.rm(path)
    try:
        filesystem.pipe_file(path, json.dumps(holder).encode())
    except OSError as error:
        raise OutputWriteError(
            f"cannot write {location} ({type(error).__name__}: {error}): "
            "choose a writable output location or fix its permissions"
        ) from None
    current = _read(location)
    if current is None or current.get("token") != holder["token"]:
        raise _locked(output, location, current)


def _release(location: str, token: str) -> None:
    """Remove the lock if it is still ours."""
    current = _read(location)
    if current is None or current.get("token") != token:
        return
    with contextlib.suppress(FileNotFoundError):
        if is_url(location):
            import fsspec

            filesystem, path = fsspec.core.url_to_fs(location)
            filesystem.rm(path)
        else:
            os.unlink(location)


def _read(location: str) -> dict[str, Any] | None:
    """The lock's holder; None when there is no lock. An unreadable lock reads as ``{}``."""
    try:
        if is_url(location):
            import fsspec

            filesystem, path = fsspec.core.url_to_fs(location)
            if not filesystem.exists(path):
                return None
            text = filesystem.cat_file(path)
        else:
            with open(location, "rb") as file:
                text = file.read()
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text)
    except ValueError:
        return {}  # being written right now, or damaged: held until a person says otherwise
    return holder if isinstance(holder, dict) else {}


def _is_stale(holder: dict[str, Any]) -> bool:
    """Whether the holder is a process of this host that no longer exists."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    return not process_alive(pid)


def _locked(output: str, location: str, holder: dict[str, Any] | None) -> OutputLocked:
    holder = holder or {}
    who = (
        f"pid {holder['pid']} on {holder.get('host', '?')} since {holder.get('started', '?')}"
        if "pid" in holder
        else "an unknown run"
    )
    return OutputLocked(
        f"{output} is being written by another run ({who}): wait for it to finish, or if that "
        f"run is gone, delete {location} and rerun"
    )
