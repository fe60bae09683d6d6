"""Resources that must not run away: the driver's planning time and memory do not grow with the
chunks it does not touch, tiny input chunks do not make tiny tasks, and worker counts are capped
by what the machine has (issue 27)."""

from __future__ import annotations

import logging
import os
import time
import tracemalloc

import numpy as np
import pytest
import zarr

from unet.config import SegmentParameters
from unet.engine.run import segment


class Stop(Exception):
    """Raised by a progress callback to stop a run where it is."""


def test_planning_a_huge_grid_does_not_grow_with_the_chunks_it_does_not_touch(
    tmp_path, model, client
):
    """A 10^6 x 10^6 image in 1024^2 chunks (954,529 chunks) with one stored chunk: everything
    before the first task (plan, output, ledger, settling, order) in seconds and little memory."""
    array = zarr.create_array(
        str(tmp_path / "huge.zarr"), shape=(10**6, 10**6), chunks=(1024, 1024), dtype="uint8"
    )
    array[:1024, :1024] = np.random.default_rng(0).integers(1, 255, (1024, 1024), np.uint8)
    started = time.perf_counter()
    tracemalloc.start()

    def stop(done, total):
        raise Stop((done, total))

    try:
        with pytest.raises(Stop) as stopped:
            segment(
                str(tmp_path / "huge.zarr"),
                str(tmp_path / "mask.zarr"),
                SegmentParameters(model=model, device="cpu", nodata=0),
                progress=stop,
                client=client,
            )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert stopped.value.args[0] == (954_528, 954_529)  # all but the stored chunk settled
    assert time.perf_counter() - started < 20
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB"


def test_an_image_in_1_x_1_chunks_is_segmented_in_chunks_of_32(tmp_path, client, model):
    pixels = np.random.default_rng(0).integers(0, 255, (32, 32), np.uint8)
    zarr.create_array(str(tmp_path / "in.zarr"), data=pixels, chunks=(1, 1))
    started = time.perf_counter()
    report = segment(
        str(tmp_path / "in.zarr"),
        str(tmp_path / "o.zarr"),
        SegmentParameters(model=model, device="cpu"),
        client=client,
    )
    assert report.chunks_total == report.chunks_computed == 1
    assert zarr.open_group(str(tmp_path / "o.zarr"), mode="r")["0"].chunks == (32, 32)
    assert time.perf_counter() - started < 30


def test_worker_counts_are_capped_by_the_machine(monkeypatch, caplog):
    from unet.engine.cluster import plan_cluster

    cores = os.cpu_count() or 1
    with caplog.at_level(logging.WARNING, logger="unet.engine.cluster"):
        plan = plan_cluster("cpu", 100, None)
    assert plan.workers == cores and plan.torch_threads == 1
    assert "--workers 100 is more than this machine holds" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="unet.engine.cluster"):
        assert plan_cluster("cpu", 1, None).workers == 1
    assert not caplog.text
