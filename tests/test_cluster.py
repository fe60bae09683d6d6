"""The same mask from a LocalCluster of 2 workers and from external dask scheduler/worker processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from test_engine import write_checkpoint, write_image

from unet.config import SegmentParameters
from unet.engine import segment


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def external_cluster(tmp_path):
    """`dask scheduler` and `dask worker` processes on 127.0.0.1, stopped after the test."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).with_name("dask"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "cluster.log", "w")
    scheduler = subprocess.Popen(
        [
            dask,
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--dashboard-address",
            ":0",
            "--no-show",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    worker = subprocess.Popen(
        [dask, "worker", address, "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        from distributed import Client

        deadline = time.monotonic() + 60
        while True:
            try:
                with Client(address, timeout="5s") as client:
                    client.wait_for_workers(1, timeout=30)
                break
            except (OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield address
    finally:
        for process in (worker, scheduler):
            process.terminate()
        for process in (worker, scheduler):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


def test_local_cluster_and_external_cluster_give_identical_masks(tmp_path, external_cluster):
    ckpt = write_checkpoint(tmp_path / "m.safetensors")
    write_image(tmp_path / "in.zarr", (150, 120), (48, 48))
    local = SegmentParameters(model=ckpt, tile_size=204, device="cpu", workers=2)
    report = segment(str(tmp_path / "in.zarr"), str(tmp_path / "local.zarr"), local)
    external = SegmentParameters(
        model=ckpt, tile_size=204, device="cpu", scheduler=external_cluster
    )
    segment(str(tmp_path / "in.zarr"), str(tmp_path / "external.zarr"), external)
    a = zarr.open_group(str(tmp_path / "local.zarr"), mode="r")["0"][...]
    b = zarr.open_group(str(tmp_path / "external.zarr"), mode="r")["0"][...]
    assert report.chunks_computed == 12  # 4 x 3 chunks of 48
    assert np.array_equal(a, b)
