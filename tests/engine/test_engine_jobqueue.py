"""The README's way of running on a cluster manager: dask-jobqueue's local test cluster, the same
class of cluster as its SLURMCluster or PBSCluster (jobs that start ``dask worker``), with the
job's worker options of a GPU machine; ``unet segment --scheduler`` on its address."""

from __future__ import annotations

from pathlib import Path

import zarr
from testdata import assert_same_mask, reference_mask, write_checkpoint, write_image

from unet.config import SegmentParameters
from unet.engine.run import segment

#: A worker that "has a device" (see device_preload.py): it streams its chunks.
DEVICE_PRELOAD = str(Path(__file__).with_name("device_preload.py"))


def test_a_dask_jobqueue_cluster_streams_on_its_device_jobs(tmp_path):
    from dask_jobqueue.local import LocalCluster
    from distributed import Client

    from unet.engine.dispatch import describe_workers

    ckpt = write_checkpoint(tmp_path / "m.safetensors", depth=2)
    raw = write_image(tmp_path / "in.zarr", (160, 160), (32, 32))
    with LocalCluster(
        cores=1,
        processes=1,
        memory="2GiB",
        scheduler_options={"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
        worker_extra_args=["--host", "127.0.0.1", "--preload", DEVICE_PRELOAD],
    ) as cluster:
        cluster.scale(jobs=1)
        with Client(cluster) as client:
            client.wait_for_workers(1, timeout=60)
            assert [w.streams for w in describe_workers(client, "cpu")] == [True]
        parameters = SegmentParameters(
            model=ckpt, tile_size=72, device="cpu", scheduler=cluster.scheduler_address
        )
        report = segment(str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), parameters)
    assert report.chunks_computed == 25
    mask = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["0"][...]
    assert_same_mask(mask, *reference_mask(ckpt, raw[None], 72))
