"""Chunks the plan settles without a task (no data absent from the input, background): the same
mask, counts and resume as when tasks compute them, and a driver whose planning does not grow
with the chunks it does not touch."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from testdata import write_checkpoint

from unet.config import SegmentParameters
from unet.engine.ledger import BULK_PATH, LEDGER_PATH, finished_chunks
from unet.engine.run import segment
from unet.io.omezarr import MASK_NODATA


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("model") / "m.safetensors", depth=2)


class Stop(Exception):
    """Raised by a progress callback to stop a run where it is."""


def scene(shape, seed=0):
    """uint8 pixels of 40..200 with a no-data (0) band down the left and a hole at the top."""
    image = np.random.default_rng(seed).integers(40, 200, shape, dtype=np.uint8)
    image[:, :64] = 0
    image[:32, 96:160] = 0
    return image


def write_input(path, image, stored_zeros: bool):
    """``image`` in 32^2 chunks; chunks of zeros left out of the store (as Zarr does), or all
    stored (``stored_zeros``: a task reads each one and finds it no data)."""
    from unet.io.codecs import with_store_pipeline

    array = zarr.create_array(
        str(path), shape=image.shape, chunks=(32, 32), dtype="uint8", fill_value=0
    )
    # zarr-python's own pipeline, whatever an earlier run set for the process (zarrs).
    with_store_pipeline(array, write_empty_chunks=stored_zeros)[...] = image
    return str(path)


def test_absent_nodata_chunks_are_settled_by_the_plan_with_the_same_mask(tmp_path, client, model):
    image = scene((128, 192))
    absent = write_input(tmp_path / "absent.zarr", image, stored_zeros=False)
    stored = write_input(tmp_path / "stored.zarr", image, stored_zeros=True)
    assert len(list((tmp_path / "absent.zarr" / "c").rglob("*"))) < len(
        list((tmp_path / "stored.zarr" / "c").rglob("*"))
    )
    parameters = SegmentParameters(model=model, device="cpu", nodata=0)
    first_progress = []

    def progress(done, total):
        first_progress.append(done) if not first_progress else None

    settled = segment(
        absent, str(tmp_path / "a.zarr"), parameters, client=client, progress=progress
    )
    computed = segment(stored, str(tmp_path / "b.zarr"), parameters, client=client)
    # Chunk columns 0-1 (rows 0-3) and (0, 3), (0, 4): 10 chunks of no data only.
    assert first_progress == [10], "settled before any task"
    assert (settled.chunks_skipped, settled.chunks_computed) == (10, 14)
    assert (computed.chunks_skipped, computed.chunks_computed) == (10, 14)
    assert settled.class_pixels == computed.class_pixels
    assert settled.nodata_pixels == computed.nodata_pixels == int((image == 0).sum())
    a = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")
    b = zarr.open_group(str(tmp_path / "b.zarr"), mode="r")
    assert sorted(a.array_keys()) == sorted(b.array_keys())
    np.testing.assert_array_equal(a["0"][...], b["0"][...])
    assert (a["0"][...][image == 0] == MASK_NODATA).all()
    assert not (tmp_path / "a.zarr" / "0" / "c" / "0" / "0").exists(), "the fill value says it"


def test_a_run_stopped_after_settling_resumes_to_the_same_mask(tmp_path, client, model):
    image = scene((128, 192), seed=1)
    absent = write_input(tmp_path / "in.zarr", image, stored_zeros=False)
    parameters = SegmentParameters(model=model, device="cpu", nodata=0)
    clean = segment(absent, str(tmp_path / "clean.zarr"), parameters, client=client)

    def stop(done, total):
        raise Stop

    with pytest.raises(Stop):
        segment(absent, str(tmp_path / "resumed.zarr"), parameters, client=client, progress=stop)
    group = zarr.open_group(str(tmp_path / "resumed.zarr"), mode="r")
    marked = finished_chunks(group)
    assert marked.sum() == 10 and BULK_PATH in group and LEDGER_PATH in group
    assert not any((tmp_path / "resumed.zarr" / LEDGER_PATH).rglob("c/*/*")), "one bulk write"
    resumed = segment(absent, str(tmp_path / "resumed.zarr"), parameters, client=client)
    assert (resumed.chunks_resumed, resumed.chunks_computed) == (10, clean.chunks_computed)
    final = zarr.open_group(str(tmp_path / "resumed.zarr"), mode="r")
    expected = zarr.open_group(str(tmp_path / "clean.zarr"), mode="r")
    np.testing.assert_array_equal(final["0"][...], expected["0"][...])
    assert final.attrs["unet"]["complete"] is True and BULK_PATH not in final


def test_absent_chunks_are_computed_when_the_fill_value_is_not_nodata(tmp_path, client, model):
    image = scene((64, 96)) + 1  # no zeros at all: nothing is no data
    array = zarr.create_array(
        str(tmp_path / "in.zarr"), shape=image.shape, chunks=(32, 32), dtype="uint8", fill_value=7
    )
    array[:, 32:] = image[:, 32:]  # the left chunk column stays absent: it reads as 7
    parameters = SegmentParameters(model=model, device="cpu", nodata=0)
    report = segment(str(tmp_path / "in.zarr"), str(tmp_path / "o.zarr"), parameters, client=client)
    assert (report.chunks_skipped, report.chunks_computed) == (0, 6)
    assert report.input_chunks_missing == 2


def test_nan_fill_settles_absent_chunks_as_label_0_without_nodata(tmp_path, client, model):
    array = zarr.create_array(
        str(tmp_path / "in.zarr"),
        shape=(64, 96),
        chunks=(32, 32),
        dtype="float32",
        fill_value=np.nan,
    )
    assert np.isnan(array.fill_value)
    array[:, 64:] = np.random.default_rng(0).normal(0, 1, (64, 32)).astype(np.float32)
    parameters = SegmentParameters(model=model, device="cpu")
    report = segment(str(tmp_path / "in.zarr"), str(tmp_path / "o.zarr"), parameters, client=client)
    assert (report.chunks_skipped, report.chunks_computed) == (4, 2)
    assert report.nodata_pixels == 0 and sum(report.class_pixels) == 64 * 96
    mask = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")["0"]
    assert mask.fill_value == 0 and (mask[:, :64] == 0).all()


def test_a_lost_chunk_of_an_ingested_image_fails_even_where_the_plan_would_settle_it(
    tmp_path, client, model
):
    from unet.errors import ChunksFailed
    from unet.io.presence import store_every_chunk

    image = scene((128, 192), seed=2)
    path = write_input(tmp_path / "in.zarr", image, stored_zeros=False)
    store_every_chunk(path, "")  # as unet ingest leaves it: every chunk stored, and so marked
    (tmp_path / "in.zarr" / "c" / "0" / "0").unlink()  # a chunk of no data, lost
    parameters = SegmentParameters(model=model, device="cpu", nodata=0)
    with pytest.raises(ChunksFailed, match=r"input chunk \(0, 0\)") as failed:
        segment(path, str(tmp_path / "out.zarr"), parameters, client=client)
    assert [0, 0] in failed.value.report.chunks_failed
