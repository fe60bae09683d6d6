"""What an output store remembers about its run: the fingerprint and the finished chunks.

The fingerprint hashes the input's identity, the checkpoint's digest and the parameters that
change the mask. A rerun with the same fingerprint resumes; another is refused (naming what
differs) unless ``--overwrite``.

The ledger is a uint8 Zarr array with one element per output chunk and one Zarr chunk per element,
so each Dask task marks its own chunk without touching anyone else's and no lock is needed. A task
marks its chunk only after the mask chunk's write returned, so a kill or a failed write can lose
work but never leave a chunk marked done that was not fully written. The ledger itself is written
atomically (:func:`open_ledger`): a local chunk file through a rename, an object by a single PUT.

Mask chunks are not: the zarrs codec pipeline writes a local chunk file in place, so a write that
fails (a full disk) or a kill can leave a partial or empty file of a chunk that is not marked. The
ledger, not the files, says what is done: an unmarked chunk is computed again by the rerun, and a
chunk task whose write fails deletes what it wrote (see :func:`unet.engine.worker.run_chunk`).

Chunks the driver settles without a task (background, or no data by the plan: see
:mod:`unet.engine.settled`) are marked in bulk, in a second array (``_unet_ledger_bulk``) of
one element per chunk stored in a few large chunks, each written whole by one PUT or rename:
thousands of chunks cost one write. A chunk is finished when either array marks it. Reading the
ledger lists the stored objects of both (one listing: a ledger chunk is stored only once it
holds 1), so its cost goes with the chunks marked, not with the grid.

The ledger is bookkeeping of an unfinished run: once the run is complete (every chunk written,
the pyramid built, ``complete`` set in the ``unet`` attribute) it is deleted, so that a finished
mask holds only what OME-Zarr readers, napari and xarray expect. A complete run without a ledger
counts every chunk as finished.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from unet.errors import FingerprintMismatch
from unet.io.complete import ATTRIBUTE
from unet.io.omezarr import LEVEL0

LEDGER_PATH = "_unet_ledger"
#: The chunks the driver marks in bulk (see the module docstring).
BULK_PATH = "_unet_ledger_bulk"
#: Side of a chunk of the bulk array, in chunks of the mask: a 10^11-pixel image of 1024^2
#: chunks has about 300^2 of them, so one object.
BULK_CHUNK = 4096
#: Bumped whenever the engine's output for the same inputs could change.
ENGINE_VERSION = 1


@dataclass(frozen=True)
class Fingerprint:
    """The identity of a run's result."""

    components: dict[str, Any]

    @property
    def digest(self) -> str:
        text = json.dumps(self.components, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    @classmethod
    def of(cls, input_identity: dict, checkpoint_digest: str, parameters: dict) -> Fingerprint:
        return cls(
            {
                "engine": ENGINE_VERSION,
                "input": input_identity,
                "checkpoint": checkpoint_digest,
                "parameters": parameters,
            }
        )

    def differences(self, stored: dict[str, Any]) -> list[str]:
        """Dotted names of the components that differ from a stored fingerprint."""
        return sorted(_diff(json.loads(json.dumps(self.components, default=str)), stored))

    def check_against(self, stored: dict[str, Any] | None, output: str) -> None:
        """Raise :class:`FingerprintMismatch` when ``stored`` is another run's fingerprint."""
        if stored is None:
            return
        differing = self.differences(stored)
        if differing:
            raise FingerprintMismatch(
                f"{output} was written by another run (differs in: {', '.join(differing)}): "
                "use --overwrite to replace it, or choose another output"
            )


def _diff(current: Any, stored: Any, prefix: str = "") -> set[str]:
    if isinstance(current, dict) and isinstance(stored, dict):
        names: set[str] = set()
        for key in current.keys() | stored.keys():
            names |= _diff(current.get(key), stored.get(key), f"{prefix}{key}.")
        return names
    return set() if current == stored else {prefix.rstrip(".")}


def create_ledger(group, chunk_counts: tuple[int, int]) -> None:
    """Add an empty ledger (every chunk pending) to an output group."""
    group.create_array(
        BULK_PATH,
        shape=chunk_counts,
        chunks=tuple(min(n, BULK_CHUNK) for n in chunk_counts),
        dtype="uint8",
        fill_value=0,
        overwrite=True,
    )
    group.create_array(
        LEDGER_PATH,
        shape=chunk_counts,
        chunks=(1, 1),
        dtype="uint8",
        fill_value=0,
        compressors=None,
        overwrite=True,
    )


def open_ledger(group):
    """The ledger array of an output group, written atomically.

    It is opened with zarr-python's codec pipeline rather than zarrs: zarrs writes a local chunk
    file in place, and a ledger chunk left empty by a full disk would make the whole ledger
    unreadable, and the run impossible to resume. A ledger chunk is one byte: speed is no concern.
    """
    from unet.io.codecs import with_store_pipeline

    return with_store_pipeline(group[LEDGER_PATH])


def finished_chunks(group) -> np.ndarray:
    """bool (chunks_y, chunks_x): which output chunks are finished.

    Without a ledger, every chunk of a complete run and none of an unfinished one.
    """
    if LEDGER_PATH in group:
        from unet.io.presence import stored_objects

        finished = stored_objects(group[LEDGER_PATH]).astype(bool)
        if BULK_PATH in group:
            finished |= np.asarray(group[BULK_PATH][...]) == 1
        return finished
    state = group.attrs.get(ATTRIBUTE) or {}
    level0 = group[LEVEL0]
    height, width = level0.shape
    chunk_rows, chunk_cols = state.get("chunks") or level0.chunks
    counts = (-(-height // chunk_rows), -(-width // chunk_cols))
    return np.full(counts, bool(state.get("complete")))


def remove_ledger(group) -> None:
    """Delete the ledger of a complete run; nothing when there is none.

    A local ledger's folder goes in one ``rmtree`` (zarr deletes a folder's keys one by one).
    """
    from unet.io.chunkfiles import ChunkFiles
    from unet.io.locations import remove_location

    for path in (LEDGER_PATH, BULK_PATH):
        if path in group:
            files = ChunkFiles.of(group[path])
            if files is not None:
                remove_location(str(files.folder))
            else:
                del group[path]


def mark_finished(ledger_array, index: tuple[int, int], files=None) -> None:
    """Record one chunk as finished. Call only after its mask write returned.

    ``files``: the ledger's :class:`~unet.io.chunkfiles.ChunkFiles` when it is local: its one
    byte is then written as a file (atomically), without zarr's machinery per call.
    """
    if files is not None:
        files.write(index, np.ones((1, 1), np.uint8))
        return
    ledger_array[index[0] : index[0] + 1, index[1] : index[1] + 1] = 1


def mark_bulk(group, chunks: np.ndarray) -> None:
    """Record the chunks where ``chunks`` (bool (chunks_y, chunks_x)) is True as finished, in
    one write per chunk of the bulk array (atomic, as :func:`open_ledger`'s). Call only once
    the mask holds what those chunks should (for most, the fill value already does)."""
    from unet.io.codecs import with_store_pipeline

    if not chunks.any():
        return
    bulk = with_store_pipeline(group[BULK_PATH])
    bulk[...] = ((np.asarray(bulk[...]) == 1) | chunks).astype(np.uint8)
