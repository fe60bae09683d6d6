"""Runs stopped by a write error or a kill leave nothing a rerun trips on: the same command
resumes, and no file of an unfinished chunk or of an unfinished store passes for a result.

One in-process Dask worker serves the module; images are one to nine chunks.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from testdata import assert_same_mask, reference_mask, write_image

from unet.config import SegmentParameters
from unet.engine.ledger import ATTRIBUTE, finished_chunks
from unet.engine.run import segment
from unet.errors import OutputWriteError

#: The engine's default tile for 32-pixel chunks and a depth-2 model (one tile per chunk).
TILE = 72


def hidden(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def test_write_error_anywhere_in_creating_the_output_leaves_a_run_that_resumes(
    tmp_path, client, model, monkeypatch
):
    """``ulimit -f`` or a full disk at any metadata write (the output's creation, the ledger,
    the end): the output is either absent or recognisably this run's, and the rerun finishes."""
    import shutil

    from zarr.storage import LocalStore

    from unet.engine.ledger import LEDGER_PATH

    raw = write_image(tmp_path / "in.zarr", (24, 24), (32, 32))
    expected, near_tie = reference_mask(model, raw[None], TILE)
    output = tmp_path / "out.zarr"
    parameters = SegmentParameters(model=model, device="cpu", probabilities=True)
    store_set = LocalStore.set
    failing_at = 0
    while True:
        writes = []

        async def set_or_fail(self, key, value, writes=writes, failing_at=failing_at):
            writes.append(key)
            if len(writes) > failing_at:
                raise OSError(errno.EFBIG, "File too large")
            await store_set(self, key, value)

        with monkeypatch.context() as patched:
            patched.setattr(LocalStore, "set", set_or_fail)
            try:
                segment(str(tmp_path / "in.zarr"), str(output), parameters, client=client)
            except OutputWriteError as error:
                assert "rerun the same command to resume" in str(error)
            else:
                break  # no write failed: every position has been tried
        assert hidden(tmp_path) == [], f"a staging folder is left after {failing_at} writes"
        if output.exists():
            group = zarr.open_group(str(output), mode="r")
            assert ATTRIBUTE in group.attrs and LEDGER_PATH in group, f"{failing_at} writes"
        report = segment(str(tmp_path / "in.zarr"), str(output), parameters, client=client)
        assert report.chunks_computed + report.chunks_resumed == 1, f"after {failing_at} writes"
        assert_same_mask(zarr.open_group(str(output))["0"][...], expected, near_tie)
        shutil.rmtree(output)
        failing_at += 1
    assert failing_at >= 5, "creating, marking and finishing the output are several writes"


def test_failed_chunk_write_leaves_no_file_of_the_unmarked_chunk(
    tmp_path, client, model, monkeypatch
):
    """The zarrs pipeline writes chunk files in place: what a failed chunk wrote is deleted."""
    import unet.engine.dispatch

    monkeypatch.setattr(unet.engine.dispatch, "TASK_RETRIES", 0)  # the first failure ends the run
    raw = write_image(tmp_path / "in.zarr", (96, 96), (32, 32))
    output = tmp_path / "out.zarr"
    parameters = SegmentParameters(model=model, device="cpu", probabilities=True)
    # One chunk, so that the run surely tries it: the run ends at the first failure, and a
    # planted file of a chunk never tried would stay.
    full = output / "probabilities" / "c" / "0" / "1" / "1"

    def fill_disk(done: int, total: int) -> None:
        # Once the output exists: chunk (1, 1)'s probabilities fail with ENOSPC, after its mask
        # was written.
        if done == 0 and not full.is_symlink():
            full.parent.mkdir(parents=True, exist_ok=True)
            full.symlink_to("/dev/full")

    with pytest.raises(OutputWriteError, match="No space left on device"):
        segment(
            str(tmp_path / "in.zarr"), str(output), parameters, client=client, progress=fill_disk
        )
    done = finished_chunks(zarr.open_group(str(output), mode="r"))
    assert done.any() and not done.all()
    marked = {(int(i), int(j)) for i, j in np.argwhere(done)}
    for array, prefix in (("0", ()), ("probabilities", ("0",))):
        stored = {
            tuple(int(n) for n in path.relative_to(output / array / "c").parts)
            for path in (output / array / "c").rglob("*")
            if path.is_file() or path.is_symlink()
        }
        assert stored <= {(*map(int, prefix), *index) for index in marked}, array
    report = segment(str(tmp_path / "in.zarr"), str(output), parameters, client=client)
    assert report.chunks_computed == 9 - len(marked)
    expected, near_tie = reference_mask(model, raw[None], TILE)
    assert_same_mask(zarr.open_group(str(output))["0"][...], expected, near_tie)


def test_stale_staging_folders_of_dead_processes_are_removed(tmp_path, client, model):
    from unet.io.staging import staging_location

    write_image(tmp_path / "in.zarr", (8, 8), (8, 8))
    output = tmp_path / "out.zarr"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = Path(staging_location(str(output)).replace(f"-{os.getpid()}-", f"-{gone.pid}-"))
    live = Path(staging_location(str(output)))  # this process: alive, maybe still building
    for folder in (stale, live):
        (folder / "0").mkdir(parents=True)
    segment(str(tmp_path / "in.zarr"), str(output), SegmentParameters(model=model), client=client)
    assert hidden(tmp_path) == [live.name]
    assert zarr.open_group(str(output)).attrs[ATTRIBUTE]["complete"] is True


#: A Python program ingesting argv[1] into argv[2], killed by SIGKILL once the copy is done.
KILLED_INGEST = """
import os, signal, sys
import unet.io.ingest as ingest
ingest.build_pyramid = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
ingest.ingest(sys.argv[1], sys.argv[2], chunks=(16, 16), progress=False)
"""


def test_ingest_killed_midway_leaves_a_staging_folder_the_next_ingest_removes(tmp_path):
    import tifffile

    from unet.io.ingest import ingest

    pixels = np.random.default_rng(0).integers(0, 255, (40, 50), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "in.tif", pixels)
    output = tmp_path / "out.zarr"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_INGEST, str(tmp_path / "in.tif"), str(output)],
        capture_output=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not output.exists() and len(hidden(tmp_path)) == 1, "the kill left its staging"
    source = ingest(tmp_path / "in.tif", str(output), chunks=(16, 16), progress=False)
    assert hidden(tmp_path) == []
    np.testing.assert_array_equal(source.read(slice(0, 40), slice(0, 50))[0], pixels)
