"""The GPU worker's stream (several chunks per task, read ahead, writes in a pool): the same
masks as one chunk per task, and the same guarantees on failures and resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from testdata import assert_same_mask, reference_mask, write_checkpoint, write_image

import unet.predict
from unet.config import SegmentParameters
from unet.engine.cluster import ClusterPlan
from unet.engine.ledger import finished_chunks
from unet.engine.run import segment
from unet.errors import ChunksFailed, OutputWriteError

#: The engine's default tile for 32-pixel chunks and a depth-2 model (one tile per chunk).
TILE = 72


def streamed() -> ClusterPlan:
    """The plan of workers that stream their chunks (as GPU workers do)."""
    return ClusterPlan(workers=2, torch_threads=1, gpus=0, streams=True)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("model") / "m.safetensors", depth=2)


def group_of(output: Path) -> zarr.Group:
    return zarr.open_group(str(output), mode="r")


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_streamed_masks_equal_one_chunk_per_task(tmp_path, client, model, dtype):
    write_image(tmp_path / "in.zarr", (150, 130), (32, 32), dtype=dtype)  # 5 x 5 chunks
    if dtype == "float32":  # host-normalized, with a chunk of no data only (skipped)
        array = zarr.open_array(str(tmp_path / "in.zarr"), mode="r+")
        array[64:96, 32:64] = np.nan
    parameters = SegmentParameters(model=model, device="cpu", probabilities=dtype == "uint16")
    one = segment(str(tmp_path / "in.zarr"), str(tmp_path / "one.zarr"), parameters, client=client)
    stream = segment(
        str(tmp_path / "in.zarr"),
        str(tmp_path / "stream.zarr"),
        parameters,
        client=client,
        cluster=streamed(),
    )
    assert (stream.chunks_computed, stream.chunks_skipped) == (
        one.chunks_computed,
        one.chunks_skipped,
    )
    assert stream.chunks_computed + stream.chunks_skipped == 25
    assert stream.class_pixels == one.class_pixels
    a, b = group_of(tmp_path / "one.zarr"), group_of(tmp_path / "stream.zarr")
    np.testing.assert_array_equal(b["0"][...], a["0"][...])
    assert b["0"][...].any() and not b["0"][...].all()
    if parameters.probabilities:
        np.testing.assert_array_equal(b["probabilities"][...], a["probabilities"][...])


def test_a_chunk_that_cannot_be_read_fails_alone_in_its_stream(tmp_path, client, model):
    write_image(tmp_path / "in.zarr", (96, 128), (32, 32))
    chunk_file = tmp_path / "in.zarr" / "c" / "0" / "0"
    intact = chunk_file.read_bytes()
    chunk_file.write_bytes(intact[: len(intact) // 2])  # truncated
    parameters = SegmentParameters(model=model, device="cpu")
    failed = {}
    for name, cluster in (("one", None), ("stream", streamed())):
        with pytest.raises(ChunksFailed) as caught:
            segment(
                str(tmp_path / "in.zarr"),
                str(tmp_path / f"{name}.zarr"),
                parameters,
                client=client,
                cluster=cluster,
            )
        failed[name] = {tuple(index) for index in caught.value.report.chunks_failed}
        done = finished_chunks(group_of(tmp_path / f"{name}.zarr"))
        assert {tuple(int(v) for v in i) for i in np.argwhere(~done)} == failed[name]
    assert failed["stream"] == failed["one"] and (0, 0) in failed["one"]
    assert len(failed["one"]) < 12

    chunk_file.write_bytes(intact)  # repaired: the stream's rerun computes only those chunks
    report = segment(
        str(tmp_path / "in.zarr"),
        str(tmp_path / "stream.zarr"),
        parameters,
        client=client,
        cluster=streamed(),
    )
    assert (report.chunks_computed, report.chunks_resumed) == (
        len(failed["one"]),
        12 - len(failed["one"]),
    )
    segment(str(tmp_path / "in.zarr"), str(tmp_path / "one.zarr"), parameters, client=client)
    np.testing.assert_array_equal(
        group_of(tmp_path / "stream.zarr")["0"][...], group_of(tmp_path / "one.zarr")["0"][...]
    )


def test_a_failed_write_in_a_stream_leaves_its_chunk_unmarked(tmp_path, client, model, monkeypatch):
    import shutil

    import unet.engine.dispatch

    # The first failure ends the run.
    monkeypatch.setattr(unet.engine.dispatch, "TASK_RETRIES", 0)
    raw = write_image(tmp_path / "in.zarr", (96, 96), (32, 32))
    expected, near_tie = reference_mask(model, raw[None], TILE)
    output = tmp_path / "out.zarr"
    blocked = output / "0" / "c" / "1" / "1"  # the middle chunk of the first stream of 5

    def block_write(done: int, total: int) -> None:
        # A folder where the chunk's file goes: its write fails for real (EISDIR).
        if done == 0 and not blocked.is_dir():
            (blocked / "keep").mkdir(parents=True)

    parameters = SegmentParameters(model=model, device="cpu")
    try:
        with pytest.raises(OutputWriteError, match="Is a directory"):
            segment(
                str(tmp_path / "in.zarr"),
                str(output),
                parameters,
                client=client,
                progress=block_write,
                cluster=streamed(),
            )
    finally:
        shutil.rmtree(blocked, ignore_errors=True)
    done = finished_chunks(group_of(output))
    assert not done[1, 1]
    mask = group_of(output)["0"][...]
    for i, j in np.argwhere(done):
        rows, cols = slice(32 * i, 32 * i + 32), slice(32 * j, 32 * j + 32)
        assert_same_mask(mask[rows, cols], expected[rows, cols], near_tie[rows, cols])
    report = segment(
        str(tmp_path / "in.zarr"), str(output), parameters, client=client, cluster=streamed()
    )
    assert report.chunks_computed == 9 - int(done.sum())
    assert_same_mask(group_of(output)["0"][...], expected, near_tie)


def test_a_device_failure_mid_stream_keeps_only_the_written_chunks(
    tmp_path, client, model, monkeypatch
):
    """In this process: the stream's task raises only once the writes it started have ended,
    and exactly those chunks are marked; a rerun resumes from them."""
    from unet.engine.output import open_output
    from unet.engine.plan import plan_run
    from unet.engine.run import chunk_job
    from unet.engine.stream import run_chunk_batch

    raw = write_image(tmp_path / "in.zarr", (96, 96), (32, 32))
    expected, near_tie = reference_mask(model, raw[None], TILE)
    output = str(tmp_path / "out.zarr")
    parameters = SegmentParameters(model=model, device="cpu")
    plan = plan_run(str(tmp_path / "in.zarr"), output, parameters)
    job = chunk_job(plan, open_output(plan))
    real, calls = unet.predict.device_step, []

    def lost_on_the_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("device lost")
        return real(*args, **kwargs)

    monkeypatch.setattr(unet.predict, "device_step", lost_on_the_third_batch)
    order = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    with pytest.raises(RuntimeError, match="device lost"):
        run_chunk_batch(job, order)
    done = finished_chunks(group_of(Path(output)))
    assert {tuple(int(v) for v in i) for i in np.argwhere(done)} == {(0, 0), (0, 1)}

    monkeypatch.setattr(unet.predict, "device_step", real)
    results = run_chunk_batch(job, order)
    assert [r.index for r in results] == order and not any(r.skipped for r in results)
    report = segment(
        str(tmp_path / "in.zarr"), output, parameters, client=client, cluster=streamed()
    )
    assert (report.chunks_resumed, report.chunks_computed) == (5, 4)
    assert_same_mask(group_of(Path(output))["0"][...], expected, near_tie)


def test_levels_above_the_chunks_are_built_during_a_streamed_run(tmp_path, client, model):
    """The levels the chunks cannot write themselves, halved block by block as their chunks
    finish: the same pyramid as one built at the end."""
    import unet.engine.levels

    write_image(tmp_path / "in.zarr", (1040, 100), (128, 128))  # 9 x 1 chunks, one level above
    parameters = SegmentParameters(model=model, device="cpu")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(unet.engine.levels, "BLOCK_SIDE", 256)  # blocks of one chunk: 5 x 1
        segment(
            str(tmp_path / "in.zarr"),
            str(tmp_path / "stream.zarr"),
            parameters,
            client=client,
            cluster=streamed(),
        )
    segment(str(tmp_path / "in.zarr"), str(tmp_path / "one.zarr"), parameters, client=client)
    a, b = group_of(tmp_path / "one.zarr"), group_of(tmp_path / "stream.zarr")
    assert sorted(b.array_keys()) == sorted(a.array_keys()) and "1" in a.array_keys()
    for path in ("0", "1"):
        np.testing.assert_array_equal(b[path][...], a[path][...])
    assert b["1"][...].any()
    assert (
        b.attrs["ome"]["multiscales"][0]["datasets"] == a.attrs["ome"]["multiscales"][0]["datasets"]
    )
    assert b.attrs["unet"]["complete"] is True


def test_upper_levels_hand_out_each_block_once_its_chunks_are_done(tmp_path):
    """In this process: a block is ready as soon as the chunks beneath it are done, in any
    order; halved (as a worker would), it readies the block above; finish() builds the rest."""
    import unet.engine.levels
    from unet.engine.levels import UpperLevels, halve_blocks
    from unet.io.omezarr import create_label_image
    from unet.io.pyramid import build_pyramid
    from unet.tiling import ChunkGrid

    mask = (np.random.default_rng(2).random((1100, 1300)) > 0.5).astype(np.uint8)
    grid = ChunkGrid(mask.shape, (256, 256))  # 5 x 6 chunks
    for name in ("a.zarr", "b.zarr"):
        create_label_image(
            str(tmp_path / name),
            mask.shape,
            (256, 256),
            class_names=["background", "nucleus"],
            colours=[(0, 0, 0), (255, 0, 0)],
            name="mask",
        )
        zarr.open_group(str(tmp_path / name), mode="r+")["0"][...] = mask
    build_pyramid(str(tmp_path / "a.zarr"), reduction="nearest")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(unet.engine.levels, "BLOCK_SIDE", 512)  # blocks of one chunk of level 1
        done = np.zeros(grid.counts, dtype=bool)
        done[0, 0] = True  # resumed
        levels = UpperLevels(str(tmp_path / "b.zarr"), 0, grid, done)
        assert levels.count == 1 and not levels.take_ready()  # level 1 in 3 x 3 blocks
        levels.chunks_done(np.array([[0, 1], [1, 0]]))
        assert not levels.take_ready()
        levels.chunks_done(np.array([[1, 1]]))  # completes block (0, 0): chunks (0..1, 0..1)
        ready = levels.take_ready()
        assert ready == [(0, (0, 0))] and not levels.take_ready()
        levels.blocks_done(halve_blocks(levels.spec, ready))
        assert levels.halved == {(0, (0, 0))}
        levels.chunks_done(np.array([[i, j] for i in range(2, 5) for j in range(6)]))
        rest = sorted(levels.take_ready())  # rows 1 and 2 of blocks; row 0 waits for columns 2-5
        assert rest == [(0, (top, left)) for top in (256, 512) for left in (0, 256, 512)]
        levels.finish()  # halves the blocks not halved yet, here
    a, b = group_of(tmp_path / "a.zarr"), group_of(tmp_path / "b.zarr")
    np.testing.assert_array_equal(b["1"][...], a["1"][...])
    assert b.attrs["ome"]["multiscales"] == a.attrs["ome"]["multiscales"]


def test_each_worker_streams_its_own_stretch_of_the_image():
    from unet.engine.dispatch import ChunkQueue
    from unet.tiling import strip_order, strip_order_array

    todo = np.ones((10, 4), bool)
    pending = strip_order_array(todo)  # 40 chunks, strip order
    assert [tuple(c) for c in pending.tolist()] == strip_order(
        [(i, j) for i in range(10) for j in range(4)]
    )
    queue = ChunkQueue(pending, ["a", "b"])  # stretches of 20 chunks
    assert (queue.take("a", 8) == pending[0:8]).all()
    assert (queue.take("b", 8) == pending[20:28]).all()
    assert (queue.take("b", 12) == pending[28:40]).all()
    assert (queue.take("b", 3) == pending[17:20]).all()  # its own is done: the end of a's
    assert (queue.take("c", 100) == pending[8:17]).all()  # a worker that joined later
    assert queue.take("a", 1) is None and queue.left == 0


def test_tasks_are_sized_by_the_measured_speed_of_their_worker():
    from unet.engine.dispatch import MAX_CHUNKS_PER_TASK, TARGET_TASK_SECONDS, TaskSizer

    sizer = TaskSizer({"gpu": 8, "cpu": 1}, slots=4)
    assert (sizer.size("gpu", 10_000), sizer.size("cpu", 10_000)) == (8, 1)
    sizer.observe("gpu", 8, 0.08)  # 10 ms a chunk
    sizer.observe("cpu", 1, TARGET_TASK_SECONDS / 4)
    assert sizer.size("gpu", 10_000) == 100 and sizer.size("cpu", 10_000) == 4
    for _ in range(3):
        sizer.observe("gpu", 100, 0.01)  # faster still: capped
    assert sizer.size("gpu", 10_000) == MAX_CHUNKS_PER_TASK
    # Towards the end a task takes at most what is left over twice the tasks in flight.
    assert sizer.size("gpu", 40) == 5 and sizer.size("gpu", 1) == 1
