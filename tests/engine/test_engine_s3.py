"""Shared storage: input and output as ``s3://`` URLs on a local S3-compatible server (moto).

zarr, s3fs and the Dask workers reach the server through the standard AWS environment variables
(``AWS_ENDPOINT_URL`` and test credentials), as workers on other machines would. The result must
equal a local run of the same image bit for bit, and the flows' URL handling (finished-output
check, pyramid check, preview written next to the mask) must work on the object store.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from testdata import free_port, write_checkpoint

from unet.config import SegmentParameters

pytest.importorskip("s3fs")
pytest.importorskip("moto")

BUCKET = "unet-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 with one bucket; the AWS environment points at it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.delenv("AWS_PROFILE", raising=False)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir(BUCKET)
        yield f"s3://{BUCKET}"
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    # Threads in this process: the workers share the environment that points at the S3 server.
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as dask_client,
    ):
        yield dask_client


def test_segment_from_s3_to_s3_equals_a_local_run(s3, client, tmp_path):
    from prefect.logging import disable_run_logger

    from flows.tasks import check_pyramid
    from unet.engine.finished import finished_report
    from unet.engine.run import segment
    from unet.results.preview import preview_path, render_preview, write_bytes

    model = write_checkpoint(tmp_path / "m.safetensors")
    data = np.random.default_rng(3).integers(0, 255, (80, 72)).astype("uint8")
    for location in (str(tmp_path / "in.zarr"), f"{s3}/in.zarr"):
        zarr.create_array(location, shape=data.shape, chunks=(32, 32), dtype="uint8")[...] = data
    parameters = SegmentParameters(model=model, tile_size=204, device="cpu")

    local = segment(
        str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), parameters, client=client
    )
    remote = segment(f"{s3}/in.zarr", f"{s3}/out.zarr", parameters, client=client)
    assert remote.chunks_computed == local.chunks_computed == 9
    assert remote.class_pixels == local.class_pixels
    expected = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    written = zarr.open_group(f"{s3}/out.zarr", mode="r")
    assert np.array_equal(written["0"][...], expected["0"][...])
    assert written.attrs["unet"]["complete"]

    with disable_run_logger():
        assert check_pyramid.fn(f"{s3}/out.zarr")[0] == [80, 72]
    again = finished_report(f"{s3}/in.zarr", f"{s3}/out.zarr", parameters)
    assert again is not None and again.chunks_resumed == 9

    png = render_preview(f"{s3}/in.zarr", f"{s3}/out.zarr")
    write_bytes(preview_path(f"{s3}/out.zarr"), png)
    import s3fs

    assert s3fs.S3FileSystem().cat(f"{BUCKET}/out.preview.png") == png
