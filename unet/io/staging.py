"""Build a local output beside its place, then rename it into place; clean up after the killed.

A folder is built under a hidden sibling name, ``.<name>.partial-<host>-<pid>-<random>``, and
renamed onto ``<name>`` once complete, so ``<name>`` holds either nothing, the old output, or the
complete new one: a failure midway leaves nothing that a rerun could mistake for a result.

A process killed while building leaves its sibling behind. The name says who built it (a tag of
the host name and the process id), so the next build of the same output removes the siblings of
processes of this host that no longer exist, as :mod:`unet.engine.lock` judges its locks; those of
another host or of a live process are left alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import uuid
from pathlib import Path

from unet.io.locations import remove_location

#: What a sibling is for: being built, or an old output moved aside while the new one moves in.
PURPOSES = ("partial", "old")


def staging_location(location: str, purpose: str = "partial") -> str:
    """A fresh hidden sibling of the local path ``location`` for this process: ``.<name>.<purpose>-
    <host tag>-<pid>-<random>``."""
    target = Path(location)
    owner = f"{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return str(target.with_name(f".{target.name}.{purpose}-{owner}"))


def replace_location(staging: str, location: str) -> None:
    """Move the finished ``staging`` folder onto ``location``; an old output there is moved aside
    first and removed only after the move."""
    old = None
    if os.path.lexists(location):
        old = staging_location(location, "old")
        os.replace(location, old)
    os.replace(staging, location)
    if old is not None:
        remove_location(old)


def remove_staging(staging: str) -> None:
    """Remove the folder of a build that failed.

    A zarr call that failed may return while writes it started still run on zarr's event loop
    (its gather raises the first error without waiting for the others), and a late one would
    make the folder again: those writes end first (10 s at most).
    """
    import asyncio

    from zarr.core.sync import sync

    async def settle() -> None:
        current = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not current]
        if pending:
            await asyncio.wait(pending, timeout=10)

    with contextlib.suppress(Exception):
        sync(settle())
    remove_location(staging)


def remove_stale_staging(location: str) -> list[str]:
    """Remove the siblings of ``location`` left by dead processes of this host; return them.

    Siblings whose owner is alive, or on another host, stay: they may still be being built.
    """
    target = Path(location)
    pattern = re.compile(
        rf"^\.{re.escape(target.name)}\.(?:{'|'.join(PURPOSES)})-(\w+)-(\d+)-[0-9a-f]+$"
    )
    try:
        names = os.listdir(target.parent)
    except OSError:
        return []
    removed = []
    for name in names:
        found = pattern.match(name)
        if found is None or found[1] != _host_tag() or process_alive(int(found[2])):
            continue
        path = str(target.with_name(name))
        try:
            remove_location(path)
        except OSError:
            continue  # another process cleans it up at the same moment
        removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by another user
        return True
    return True


def _host_tag() -> str:
    """8 hex digits naming this host in file names (host names may hold any character)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
