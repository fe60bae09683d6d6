"""The same mask from a LocalCluster of 2 workers and from external dask scheduler/worker processes."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from testdata import (
    UNET,
    assert_same_mask,
    free_port,
    kill_segment_when_marked,
    reference_mask,
    untracked,
    write_checkpoint,
    write_image,
)

from unet.config import SegmentParameters
from unet.engine.run import segment

#: A worker that "has a device" (see device_preload.py): it streams its chunks.
DEVICE_PRELOAD = str(Path(__file__).with_name("device_preload.py"))


@contextlib.contextmanager
def started_cluster(folder: Path, workers: list[list[str]]):
    """``dask scheduler`` and one ``dask worker`` per entry of ``workers`` (its extra options),
    on 127.0.0.1, as the README starts them; stopped on leaving."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).with_name("dask"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(folder / "cluster.log", "w")  # noqa: SIM115
    processes = [
        subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port)]
            + ["--dashboard-address", ":0", "--no-show"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    ]
    for options in workers:
        processes.append(
            subprocess.Popen(
                [dask, "worker", address, "--nthreads", "1", "--host", "127.0.0.1"]
                + ["--no-dashboard", *options],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        )
    try:
        from distributed import Client

        deadline = time.monotonic() + 60
        while True:
            try:
                with Client(address, timeout="5s") as client:
                    client.wait_for_workers(len(workers), timeout=30)
                break
            except (OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in reversed(processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


@pytest.fixture
def external_cluster(tmp_path):
    """`dask scheduler` and one `dask worker` process on 127.0.0.1, stopped after the test."""
    with started_cluster(tmp_path, [[]]) as address:
        yield address


@pytest.fixture(scope="module")
def mixed_cluster(tmp_path_factory):
    """An external cluster of a CPU worker and a worker with a device (it streams)."""
    with started_cluster(
        tmp_path_factory.mktemp("mixed"), [[], ["--preload", DEVICE_PRELOAD]]
    ) as address:
        yield address


# About 7 s; the mixed external cluster's test below checks an external run by default.
@pytest.mark.slow
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


def test_the_driver_always_sees_the_workers_a_cluster_has():
    """The client's own refresh of its cached scheduler info (here every millisecond) carries
    no workers; the driver must never take that cache for the cluster (a run once failed with
    \"the Dask cluster has no workers\" on a cluster with one)."""
    import dask
    from distributed import Client, LocalCluster

    from unet.engine.dispatch import cluster_workers, describe_workers

    with (
        dask.config.set({"distributed.client.scheduler-info-interval": "1ms"}),
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        assert all(len(cluster_workers(client)) == 1 for _ in range(200))
        assert all(len(describe_workers(client, "cpu")) == 1 for _ in range(50))


def test_dasks_unretrieved_timeouts_at_shutdown_are_not_printed_but_other_errors_are(caplog):
    """Under load, a cluster's shutdown once left asyncio's \"Future exception was never
    retrieved ... TimeoutError\" after a run's last line; other unretrieved errors still show."""
    import asyncio
    import gc

    from unet.engine.cluster import quiet_unretrieved_timeouts

    def unretrieved(error: Exception) -> None:
        loop = asyncio.new_event_loop()
        future = loop.create_future()
        future.set_exception(error)
        del future
        gc.collect()
        loop.close()

    quiet_unretrieved_timeouts()
    quiet_unretrieved_timeouts()  # once is enough; twice adds nothing
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        unretrieved(TimeoutError("Timeout"))
        unretrieved(ValueError("a real error"))
    assert [r.exc_info[1].args for r in caplog.records] == [("a real error",)]
    assert sum("Unretrieved" in type(f).__name__ for f in logging.getLogger("asyncio").filters) == 1


def streamed_batches(address: str) -> int:
    """Batches the device worker of ``address`` ran inside streams so far."""
    from distributed import Client

    def count() -> int:
        module = next((m for n, m in sys.modules.items() if n.endswith("device_preload")), None)
        return module.STREAMED[0] if module is not None else 0

    with Client(address, timeout="10s") as client:
        return sum(client.run(count).values())


def test_an_external_cluster_streams_on_its_device_worker_and_computes_on_its_cpu_worker(
    tmp_path, mixed_cluster
):
    from distributed import Client

    from unet.engine.dispatch import describe_workers

    ckpt = write_checkpoint(tmp_path / "m.safetensors", depth=2)
    raw = write_image(tmp_path / "in.zarr", (224, 224), (32, 32))  # 7 x 7 chunks
    with Client(mixed_cluster, timeout="10s") as client:
        workers = describe_workers(client, "cpu")
    assert sorted(w.streams for w in workers) == [False, True]
    before = streamed_batches(mixed_cluster)
    parameters = SegmentParameters(model=ckpt, tile_size=72, device="cpu", scheduler=mixed_cluster)
    report = segment(str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), parameters)
    assert report.chunks_computed == 49
    assert streamed_batches(mixed_cluster) > before, "the device worker streamed"
    mask = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["0"][...]
    assert_same_mask(mask, *reference_mask(ckpt, raw[None], 72))


@pytest.mark.slow  # about 16 s: three runs; tests/test_cli.py kills a batched local run by default
def test_a_killed_run_on_an_external_cluster_resumes_to_the_same_mask(tmp_path, mixed_cluster):
    ckpt = write_checkpoint(tmp_path / "m.safetensors", base_channels=8, depth=2)
    write_image(tmp_path / "in.zarr", (320, 320), (32, 32))  # 10 x 10 chunks
    common = ["--model", ckpt, "--tile-size", "72", "--device", "cpu"]
    reference = SegmentParameters(model=ckpt, tile_size=72, device="cpu")
    segment(str(tmp_path / "in.zarr"), str(tmp_path / "ref.zarr"), reference)
    out = tmp_path / "out.zarr"
    arguments = [str(tmp_path / "in.zarr"), str(out), *common, "--scheduler", mixed_cluster]
    kill_segment_when_marked(arguments, out, 10, 120)  # the driver; the workers live on
    time.sleep(1)  # the tasks the workers had started end, as they do when a driver dies
    from unet.engine.ledger import finished_chunks

    done = int(finished_chunks(zarr.open_group(str(out), mode="r")).sum())
    assert 0 < done < 100, "the kill must land mid-run for this test to mean anything"
    resumed = subprocess.run(
        [UNET, "segment", str(tmp_path / "in.zarr"), str(out), *common]
        + ["--scheduler", mixed_cluster, "--report", str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
        env=untracked(),
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert (
        report["chunks_resumed"] >= done
        and report["chunks_computed"] == 100 - report["chunks_resumed"]
    )
    a = zarr.open_group(str(tmp_path / "ref.zarr"), mode="r")["0"][...]
    b = zarr.open_group(str(out), mode="r")["0"][...]
    assert np.array_equal(a, b)
