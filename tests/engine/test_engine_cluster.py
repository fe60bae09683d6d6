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
from testdata import write_checkpoint, write_image

from unet.config import SegmentParameters
from unet.engine.run import segment


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


def test_cpu_default_is_one_in_process_worker_and_workers_n_are_processes(monkeypatch):
    from unet.engine.cluster import plan_cluster

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    default = plan_cluster("cpu", None, None)
    assert (default.workers, default.processes, default.torch_threads) == (1, False, 8)
    split = plan_cluster("cpu", 2, None)
    assert (split.workers, split.processes, split.torch_threads) == (2, True, 4)
    assert plan_cluster("cpu", None, "tcp://127.0.0.1:8786").workers == 0


def test_gpu_workers_run_unet_gpu_threads_chunks_and_a_bad_value_is_one_line(monkeypatch):
    import torch

    from unet.engine.cluster import GPU_THREADS, plan_cluster
    from unet.errors import InvalidParameter

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # no GPU here; only the plan
    monkeypatch.delenv("UNET_GPU_THREADS", raising=False)
    default = plan_cluster("auto", None, None)
    assert (default.workers, default.threads_per_worker, default.torch_threads) == (
        2,
        GPU_THREADS,
        1,
    )
    monkeypatch.setenv("UNET_GPU_THREADS", "2")
    assert plan_cluster("auto", None, None).threads_per_worker == 2
    for bad in ("four", "0", "-1", "2.5"):
        monkeypatch.setenv("UNET_GPU_THREADS", bad)
        with pytest.raises(InvalidParameter, match="UNET_GPU_THREADS must be"):
            plan_cluster("auto", None, None)


def test_in_process_cluster_segments_like_worker_processes(tmp_path, client):
    """The default CPU cluster (threads in this process) writes the same mask as the shared
    cluster of worker processes."""
    from unet.engine.cluster import dask_client, plan_cluster

    checkpoint = write_checkpoint(tmp_path / "model.safetensors", depth=2)
    write_image(tmp_path / "in.zarr", (1, 80, 72), (1, 32, 32), seed=3)
    parameters = SegmentParameters(model=checkpoint, tile_size=68, overwrite=True)
    segment(str(tmp_path / "in.zarr"), str(tmp_path / "a.zarr"), parameters, client=client)
    plan = plan_cluster("cpu", None, None)
    assert not plan.processes
    with dask_client(plan) as local:
        segment(str(tmp_path / "in.zarr"), str(tmp_path / "b.zarr"), parameters, client=local)
        (worker,) = local.cluster.workers.values()
        # unet.engine.cluster.QUIET: no profiler sampling the chunk's thread every 10 ms.
        assert "profile" not in worker.periodic_callbacks
    a = zarr.open_array(str(tmp_path / "a.zarr" / "0"))[:]
    b = zarr.open_array(str(tmp_path / "b.zarr" / "0"))[:]
    assert a.any() and not a.all()
    np.testing.assert_array_equal(a, b)
