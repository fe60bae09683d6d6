"""Runs that meet faults: bad pixels, corrupt chunks, a full disk, a second run, lost workers.

One Dask cluster, made by ``unet.engine.cluster.dask_client`` as ``unet segment`` makes it, serves the
module; models are depth 2 and images a few chunks, so each run takes about a second.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from testdata import assert_same_mask, make_model, reference_mask, write_image

from unet.config import SegmentParameters
from unet.engine.ledger import ATTRIBUTE, finished_chunks
from unet.engine.lock import lock_location
from unet.engine.run import segment
from unet.errors import ChunksFailed, DeviceOutOfMemory, OutputLocked, OutputWriteError

UNET = str(Path(sys.executable).with_name("unet"))
#: The engine's default tile for 32-pixel chunks and a depth-2 model (one tile per chunk).
TILE = 72


@pytest.fixture(scope="module")
def client():
    """A cluster of one worker process (the faults' shared client runs in this process)."""
    from unet.engine.cluster import ClusterPlan, dask_client

    with dask_client(ClusterPlan(workers=1, torch_threads=1, gpus=0)) as dask:
        yield dask


def parameters(model: str) -> SegmentParameters:
    return SegmentParameters(model=model, device="cpu")


def mask_of(output: Path) -> np.ndarray:
    return zarr.open_group(str(output), mode="r")["0"][...]


def test_local_cluster_listens_on_localhost_only(client):
    from unet.engine.dispatch import cluster_workers

    workers = cluster_workers(client)
    assert client.scheduler.address.startswith("tcp://127.0.0.1:")
    assert workers and all(address.startswith("tcp://127.0.0.1:") for address in workers)
    assert client.dashboard_link.startswith("http://127.0.0.1:")


def test_nan_and_inf_pixels_are_no_data_with_label_0(tmp_path, client, model):
    image = np.random.default_rng(0).normal(100, 40, (64, 96)).astype(np.float32)
    image[5, 7], image[40, 50], image[41, 51] = np.nan, np.inf, -np.inf
    image[32:, 64:] = np.nan  # chunk (1, 2): no data at all
    array = zarr.create_array(
        str(tmp_path / "in.zarr"), shape=image.shape, chunks=(32, 32), dtype="float32"
    )
    array[...] = image
    report = segment(
        str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), parameters(model), client=client
    )

    assert (report.chunks_computed, report.chunks_skipped) == (5, 1)
    bad = ~np.isfinite(image)
    # The model sees a non-finite pixel as the checkpoint's mean (0 after normalization).
    filled = np.where(bad, np.float32(100.0), image)
    expected, near_tie = reference_mask(model, filled[None], TILE)
    expected[bad] = 0
    mask = mask_of(tmp_path / "out.zarr")
    assert (mask[bad] == 0).all()
    assert_same_mask(mask, expected, near_tie)


def test_corrupt_input_chunk_fails_only_its_chunks_and_the_rerun_completes(tmp_path, client, model):
    raw = write_image(tmp_path / "in.zarr", (96, 96), (32, 32))
    expected, near_tie = reference_mask(model, raw[None], TILE)
    chunk_file = tmp_path / "in.zarr" / "c" / "0" / "0"
    intact = chunk_file.read_bytes()
    chunk_file.write_bytes(intact[: len(intact) // 2])  # truncated
    output = tmp_path / "out.zarr"

    with pytest.raises(ChunksFailed) as caught:
        segment(str(tmp_path / "in.zarr"), str(output), parameters(model), client=client)
    message, report = str(caught.value), caught.value.report
    failed = {tuple(index) for index in report.chunks_failed}
    assert "\n" not in message and "(0, 0)" in message and "rerun" in message
    assert (0, 0) in failed and (2, 2) not in failed
    assert report.to_dict()["chunks_failed"] == sorted([list(i) for i in failed])
    assert report.chunks_computed == 9 - len(failed)
    group = zarr.open_group(str(output), mode="r")
    assert group.attrs[ATTRIBUTE]["complete"] is False
    done = finished_chunks(group)
    assert {tuple(int(v) for v in i) for i in np.argwhere(~done)} == failed, "failed = unmarked"
    mask = mask_of(output)
    for i, j in np.argwhere(done):
        rows, cols = slice(32 * i, 32 * i + 32), slice(32 * j, 32 * j + 32)
        assert_same_mask(mask[rows, cols], expected[rows, cols], near_tie[rows, cols])
    assert not Path(lock_location(str(output))).exists()

    chunk_file.write_bytes(intact)  # repaired in place: same input, the run resumes
    report = segment(str(tmp_path / "in.zarr"), str(output), parameters(model), client=client)
    assert (report.chunks_computed, report.chunks_resumed) == (len(failed), 9 - len(failed))
    assert report.chunks_failed == []
    assert_same_mask(mask_of(output), expected, near_tie)


def test_cli_writes_the_failed_chunks_to_the_report_and_exits_2(tmp_path, monkeypatch, capsys):
    import json

    import flows.runner
    from unet.cli import main
    from unet.engine.report import SegmentReport

    report = SegmentReport("in.zarr", "out.zarr", (1, 64, 64), 4, 3, chunks_failed=[[0, 1]])
    error = ChunksFailed("1 of 4 chunks of out.zarr could not be computed (chunks (0, 1); ...)")
    error.report = report

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(flows.runner, "run_segment", fail)
    arguments = ["segment", "in.zarr", "out.zarr", "--report", str(tmp_path / "r.json")]
    monkeypatch.setattr(sys, "argv", ["unet", *arguments])
    with pytest.raises(SystemExit) as exit:
        main()
    assert exit.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: 1 of 4 chunks")
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["chunks_failed"] == [[0, 1]] and written["chunks_computed"] == 3


def test_nan_pixels_are_never_tissue():
    from unet.engine.background import tissue_mask

    image = np.full((1, 40, 40), 240.0, np.float32)  # bright background
    image[0, 10:20, 10:20] = 60.0  # dark tissue
    image[0, :, 30:] = np.nan
    image[0, 0, 0] = np.inf
    tissue = tissue_mask(image, dilation=0)
    assert tissue[10:20, 10:20].all() and tissue.sum() == 100


def test_a_failed_chunk_write_is_one_line_and_marks_only_written_chunks(
    tmp_path, client, model, monkeypatch
):
    import shutil

    import unet.engine.dispatch

    # Without retries the first failed write ends the run.
    monkeypatch.setattr(unet.engine.dispatch, "TASK_RETRIES", 0)
    raw = write_image(tmp_path / "in.zarr", (96, 96), (32, 32))
    expected, near_tie = reference_mask(model, raw[None], TILE)
    output = tmp_path / "full disk.zarr"
    blocked = [output / "0" / "c" / "2" / str(j) for j in range(3)]  # the last row's mask chunks

    def block_writes(done: int, total: int) -> None:
        # Called once the output exists and before any chunk runs: a folder where each of the
        # last row's chunk files goes, so that its write fails for real (a chunk file renamed
        # over it, or opened in place, is refused with EISDIR), as on a full disk. A full disk
        # itself (ENOSPC): tests/io/test_io_chunkfiles.py and faults/test_fault_resume.py.
        if done == 0 and not blocked[0].is_dir():
            for path in blocked:
                (path / "keep").mkdir(parents=True)

    try:
        with pytest.raises(OutputWriteError, match="Is a directory") as caught:
            segment(
                str(tmp_path / "in.zarr"),
                str(output),
                parameters(model),
                client=client,
                progress=block_writes,
            )
    finally:
        for path in blocked:
            shutil.rmtree(path, ignore_errors=True)
    assert "\n" not in str(caught.value) and "chunk (2, " in str(caught.value)
    assert not Path(lock_location(str(output))).exists()
    done = finished_chunks(zarr.open_group(str(output), mode="r"))
    assert done.any() and not done[2].any()
    mask = mask_of(output)
    for i, j in np.argwhere(done):
        rows, cols = slice(32 * i, 32 * i + 32), slice(32 * j, 32 * j + 32)
        assert_same_mask(mask[rows, cols], expected[rows, cols], near_tie[rows, cols])

    report = segment(str(tmp_path / "in.zarr"), str(output), parameters(model), client=client)
    assert report.chunks_computed == 9 - int(done.sum())
    assert_same_mask(mask_of(output), expected, near_tie)


def test_second_run_on_a_busy_output_is_refused_and_the_first_finishes(tmp_path, client, model):
    raw = write_image(tmp_path / "in.zarr", (64, 64), (32, 32))
    output = tmp_path / "out.zarr"
    lock = Path(lock_location(str(output)))
    holding, release = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def hold(done: int, total: int) -> None:  # called by the first run while it holds the lock
        holding.set()
        release.wait(60)

    def first() -> None:
        try:
            outcome["report"] = segment(
                str(tmp_path / "in.zarr"),
                str(output),
                parameters(model),
                client=client,
                progress=hold,
            )
        except Exception as error:  # reported below
            outcome["error"] = error

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert holding.wait(60) and lock.exists()
        for overwrite in (False, True):
            second = parameters(model).model_copy(update={"overwrite": overwrite})
            with pytest.raises(OutputLocked, match=f"pid {os.getpid()}"):
                segment(str(tmp_path / "in.zarr"), str(output), second, client=client)
    finally:
        release.set()
        thread.join(60)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["report"].chunks_computed == 4 and not lock.exists()
    expected, near_tie = reference_mask(model, raw[None], TILE)
    assert_same_mask(mask_of(output), expected, near_tie)


def test_stale_lock_of_a_killed_run_is_taken_over(tmp_path, client, model):
    import json
    import socket

    write_image(tmp_path / "in.zarr", (32, 32), (32, 32))
    output = tmp_path / "out.zarr"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock = Path(lock_location(str(output)))
    lock.write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "token": "old"}))
    report = segment(str(tmp_path / "in.zarr"), str(output), parameters(model), client=client)
    assert report.chunks_computed == 1 and not lock.exists()


def test_names_with_spaces_and_accents(tmp_path, client, model):
    from PIL import Image

    from flows.names import artifact_key
    from flows.segment import folder_jobs
    from unet.io.ingest import ingest

    folder = tmp_path / "dossier é"
    raw = write_image(folder / "my slide é.zarr", (40, 40), (32, 32))
    Image.fromarray(raw[:, ::-1].copy()).save(folder / "scan 1 ü.png")
    jobs = folder_jobs(str(folder), str(tmp_path / "masques ü"))
    assert [Path(job.output).name for job in jobs] == ["my slide é.zarr", "scan 1 ü.zarr"]
    for job in jobs:  # what the segment-folder flow does per image
        if job.needs_ingest:
            ingest(job.source, job.zarr_input, chunks=(32, 32), progress=False)
        segment(job.zarr_input, job.output, parameters(model), client=client)
        assert artifact_key(Path(job.output).stem)
    expected, near_tie = reference_mask(model, raw[None], TILE)
    assert_same_mask(mask_of(Path(jobs[0].output)), expected, near_tie)
    flipped, flipped_tie = reference_mask(model, raw[None, :, ::-1].copy(), TILE)
    assert_same_mask(mask_of(Path(jobs[1].output)), flipped, flipped_tie)


@pytest.fixture
def out_of_memory_model(monkeypatch):
    """A depth-2 model whose device step (``unet.predict.device_step``) runs out of memory above
    ``limit[0]`` tiles."""
    import torch

    import unet.predict

    model = make_model(depth=2)
    device_step, limit, calls = unet.predict.device_step, [1], []

    def limited(model, tiles, **options):
        calls.append(tiles.shape[0])
        if tiles.shape[0] > limit[0]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return device_step(model, tiles, **options)

    monkeypatch.setattr(unet.predict, "device_step", limited)
    return model, device_step, limit, calls


def test_out_of_memory_halves_the_batch_with_the_same_result(out_of_memory_model, caplog):
    from unet.predict.window import predict_array

    model, device_step, limit, calls = out_of_memory_model
    image = np.random.default_rng(3).standard_normal((1, 90, 100)).astype(np.float32)
    with pytest.MonkeyPatch.context() as unpatched:
        unpatched.setattr("unet.predict.device_step", device_step)
        expected = predict_array(model, image, tile_size=TILE, batch_size=8)
    with caplog.at_level(logging.WARNING, logger="unet.predict"):
        split = predict_array(model, image, tile_size=TILE, batch_size=8)
    assert calls[:4] == [8, 4, 2, 1] and set(calls[4:]) == {1}
    assert "ran out of memory with 8 tiles per forward pass: going on with 4" in caplog.text
    np.testing.assert_allclose(split, expected, atol=1e-5, rtol=0)


def test_out_of_memory_with_one_tile_is_one_line(out_of_memory_model):
    from unet.predict.window import predict_array

    model, _, limit, _ = out_of_memory_model
    limit[0] = 0
    with pytest.raises(DeviceOutOfMemory, match="smaller --tile-size") as caught:
        predict_array(model, np.zeros((1, 40, 40), np.float32), tile_size=TILE, batch_size=4)
    assert "\n" not in str(caught.value)


@pytest.mark.slow
def test_killed_worker_mid_run_gives_the_same_mask(tmp_path, client, model):
    import psutil
    from distributed import Client, LocalCluster

    write_image(tmp_path / "in.zarr", (256, 256), (32, 32))
    segment(str(tmp_path / "in.zarr"), str(tmp_path / "ref.zarr"), parameters(model), client=client)
    killed: list[int] = []
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        Client(cluster) as two,
    ):
        two.wait_for_workers(2)
        victim = sorted(two.run(os.getpid).values())[0]

        def kill_after_a_few(done: int, total: int) -> None:
            if done >= 3 and not killed:
                psutil.Process(victim).kill()
                killed.append(done)

        report = segment(
            str(tmp_path / "in.zarr"),
            str(tmp_path / "out.zarr"),
            parameters(model),
            client=two,
            progress=kill_after_a_few,
        )
    assert killed and killed[0] < report.chunks_total, "the kill must land mid-run"
    assert report.chunks_computed == report.chunks_total == 64
    assert np.array_equal(mask_of(tmp_path / "out.zarr"), mask_of(tmp_path / "ref.zarr"))


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_second_cli_run_on_a_busy_output_is_refused_in_one_line(tmp_path, model):
    """A second `unet segment` on an output a first one is writing: refused; the first finishes."""
    raw = write_image(tmp_path / "in.zarr", (512, 512), (32, 32))  # 256 chunks: ~15 s of work
    output = tmp_path / "out.zarr"
    command = [UNET, "segment", str(tmp_path / "in.zarr"), str(output), "--model", model]
    command += ["--device", "cpu"]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lock = Path(lock_location(str(output)))
    deadline = time.monotonic() + 200
    while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lock.exists(), "the first run must hold the lock for this test to mean anything"

    second = subprocess.run(command, capture_output=True, text=True, timeout=200)
    still_running = first.poll() is None
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert still_running, "the first run ended before the second was refused"
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert f"pid {first.pid}" in lines[0] and "is being written by another run" in lines[0]
    assert not lock.exists()
    expected, near_tie = reference_mask(model, raw[None], TILE)
    assert_same_mask(mask_of(output), expected, near_tie)
