"""Measurements of the benchmark, each a function of a small JSON-able ``spec``.

- :func:`measure_raw`: forward passes over a batch of random tiles, as the pipeline runs them
  (:func:`unet.predict.forward`: in bands of rows on a CPU);
- :func:`measure_pipeline`: :func:`unet.engine.run.segment` of a generated image, timed after a
  one-chunk warm-up that starts the cluster and loads the model; optionally the raw model on the
  pipeline's own worker right before and after, and the device steps' share of the wall time;
- :func:`measure_agreement`: how many mask pixels bf16/fp16 changes against fp32.

:func:`measure` runs one by its ``kind``; the harness in the repository's ``benchmarks/`` runs
each in a fresh process, compares them with MONAI and prints the targets.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def high_water_mib() -> float:
    """This process's peak RSS (``VmHWM``) in MiB; 0 where /proc has no such line.

    Not ``getrusage``'s ``ru_maxrss``: Linux carries the forking parent's high-water mark into an
    exec'd child's.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def worker_high_water() -> tuple[int, float]:
    """(pid, VmHWM in MiB) of the Dask worker this runs in."""
    return os.getpid(), high_water_mib()


def prepared_model(spec: dict[str, Any], padding: str = "valid"):
    """``(checkpoint, model, device)`` of ``spec["checkpoint"]`` on ``spec["device"]``, in eval mode
    and (with ``spec["channels_last"]``) channels-last; ``padding="same"`` copies the weights into
    a same-padding U-Net (the network MONAI's sliding window runs)."""
    import torch

    from unet.network.checkpoint import load_checkpoint
    from unet.network.model import UNet

    checkpoint = load_checkpoint(spec["checkpoint"])
    model = checkpoint.model
    if padding != "valid":
        model = UNet(**{**model.config, "padding": padding})
        model.load_state_dict(checkpoint.model.state_dict())
    device = torch.device(spec["device"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the pipeline's workers do
    model = model.eval().to(device)
    if spec["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    return checkpoint, model, device


def synchronize(device) -> None:
    """Wait for the device's queued work (a no-op on a CPU)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gpu_peak_mib(device) -> float | None:
    """Peak GPU memory torch allocated on ``device`` in this process, MiB; None on a CPU."""
    import torch

    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return None


def measure_raw(spec: dict[str, Any]) -> dict[str, Any]:
    """Forward passes over a batch of random tiles (``tile_size``, ``batch_size``): 3 warm-up
    passes, then ``repeats`` timed ones; ``mpx_per_s`` is the best pass, ``sustained_mpx_per_s``
    all of them, in useful output pixels ``(T - 2 halo)^2 x batch``."""
    import torch

    from unet.predict.device import autocast
    from unet.predict.step import forward

    _, model, device = prepared_model(spec)
    tile, batch = spec["tile_size"], spec["batch_size"]
    keep = tile - 2 * model.geometry.context
    inputs = torch.randn(
        batch, model.in_channels, tile, tile, generator=torch.Generator().manual_seed(0)
    )
    inputs = inputs.to(device)
    if spec["channels_last"]:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode(), autocast(device, spec["precision"]):
        # Warm-up: cuDNN's autotuning, and the heap, which takes a few passes to settle (see
        # unet.engine.allocator) and would otherwise be grown inside the timed passes.
        for _ in range(3):
            forward(model, inputs)
        synchronize(device)
        for _ in range(spec["repeats"]):
            started = time.perf_counter()
            forward(model, inputs)
            synchronize(device)
            times.append(time.perf_counter() - started)
    best = min(times)
    return {
        "tile_size": tile,
        "output_side": keep,
        "batch_size": batch,
        "seconds_per_forward": round(best, 4),
        "mpx_per_s": round(keep * keep * batch / best / 1e6, 4),
        # All the timed passes' pixels over all their seconds, as the pipeline's speed is taken.
        "sustained_mpx_per_s": round(keep * keep * batch * len(times) / sum(times) / 1e6, 4),
        "halo_cost": round((tile / keep) ** 2, 4),
        # What unet.predict.forward ran: the pipeline's pass, banded for a valid model on a CPU.
        "forward": "banded" if device.type == "cpu" else "module",
        "gpu_peak_mib": gpu_peak_mib(device),
    }


def measure_pipeline(spec: dict[str, Any]) -> dict[str, Any]:
    """:func:`unet.engine.run.segment` of ``spec["image"]`` into ``spec["output"]``, timed by its
    report after a warm-up on ``spec["warmup"]``; ``runs`` times (median kept). With
    ``adjacent_raw`` (a raw spec) the raw model runs on the pipeline's worker right before and
    after (``raw_in_process``).

    With ``simulate_device`` (Mpx/s, ``inf`` for a device that costs nothing) the run has the
    GPU plan (:func:`unet.engine.cluster.gpu_plan`) of ``simulated_devices`` (default 1) GPUs,
    each worker's device step replaced by :class:`unet.bench.simulate.SimulatedDevice`, and
    torch on the CPU for everything real; the result adds ``device_mpx_per_s``,
    ``feeder_efficiency`` (the pipeline's Mpx/s over all devices' Mpx/s), the CPU seconds per
    chunk of the driver's and the workers' processes and, with ``stages``, per stage of a chunk
    (:mod:`unet.bench.stages`).
    """
    started = time.perf_counter()
    from unet.config import SegmentParameters
    from unet.engine.cluster import dask_client, gpu_plan, plan_cluster
    from unet.engine.run import segment

    parameters = SegmentParameters(
        model=spec["checkpoint"],
        tile_size=spec["tile_size"],
        batch_size=spec["batch_size"],
        device=spec["device"],
        precision=spec["precision"],
        skip_background=spec.get("skip_background", False),
        overwrite=True,
    )
    simulated = spec.get("simulate_device")
    cluster = None
    if simulated is not None and spec.get("scheduler"):
        # An existing cluster: its workers stream because their device step is replaced.
        client_context = dask_client(
            plan_cluster("cpu", None, spec["scheduler"]), spec["scheduler"]
        )
        workers_here = False
    elif simulated is not None:
        devices = spec.get("simulated_devices", 1)
        # Several worker processes per device take turns on it (a lock file per device).
        cluster = gpu_plan(devices, devices * spec.get("processes_per_device", 1))
        client_context = dask_client(cluster)
        workers_here = False
    elif spec.get("in_process"):
        from distributed import Client

        client_context = Client(processes=False, n_workers=1, threads_per_worker=1)
        workers_here = True
    else:
        plan = plan_cluster(parameters.device, parameters.workers, None)
        client_context = dask_client(plan)
        workers_here = not plan.processes
    # Masks of an earlier bench run in the same --workdir are deleted before the clock starts:
    # segment(overwrite=True) would delete them inside the timed run (a measurable cost at 8192^2).
    for output in (spec["output"], spec["output"] + ".warmup"):
        shutil.rmtree(output, ignore_errors=True)
    with client_context as client, contextlib.ExitStack() as stack:
        if simulated is not None:
            from unet.bench.simulate import PLUGIN_NAME, SimulatedDevicePlugin

            shared = None
            if spec.get("processes_per_device", 1) > 1:
                shared = str(Path(spec["output"]).with_suffix(".device-lock"))
            client.register_plugin(SimulatedDevicePlugin(float(simulated), shared))
            if spec.get("scheduler"):  # a cluster that lives on: put the real step back after
                stack.callback(client.unregister_worker_plugin, PLUGIN_NAME)
            if spec.get("stages"):
                from unet.bench.stages import StageTimesPlugin

                client.register_plugin(StageTimesPlugin())
        # Warm-up: the worker imports torch and loads the model (cached by checkpoint digest).
        segment(
            spec["warmup"], spec["output"] + ".warmup", parameters, client=client, cluster=cluster
        )
        adjacent = spec.get("adjacent_raw")
        raw = []
        if adjacent:  # the raw model on the pipeline's worker, right before the timed run
            raw.append(client.submit(measure_raw, adjacent, pure=False).result())
        reports = []
        if simulated is not None and spec.get("stages"):
            from unet.bench.stages import reset_stage_times

            reset_stage_times(client)
        cpu = process_seconds(client)
        with device_seconds() as spent:
            for run in range(spec.get("runs", 1)):
                if run:
                    shutil.rmtree(spec["output"], ignore_errors=True)
                reports.append(
                    segment(
                        spec["image"], spec["output"], parameters, client=client, cluster=cluster
                    )
                )
        cpu = {name: after - cpu[name] for name, after in process_seconds(client).items()}
        # The forward passes' share of the wall time: the pipeline against its own model, free
        # of the machine's drift (known where the worker runs in this process).
        share = spent[0] / sum(r.seconds for r in reports) if workers_here else None
        if adjacent:  # ... and right after it
            raw.append(client.submit(measure_raw, adjacent, pure=False).result())
        report = sorted(reports, key=lambda r: r.seconds)[len(reports) // 2]
        gpu = None
        if spec["device"].startswith("cuda"):
            peaks = client.run(worker_gpu_peak)
            gpu = max(peaks.values()) if peaks else None
        # Worker processes' own peaks; a worker in this process is counted by the caller.
        workers = {
            pid: mib for pid, mib in client.run(worker_high_water).values() if pid != os.getpid()
        }
        stages = None
        if simulated is not None and spec.get("stages"):
            from unet.bench.stages import collect_stage_times

            stages = collect_stage_times(client)
    chunks = sum(r.chunks_computed for r in reports)
    extra: dict[str, Any] = {}
    if simulated is not None:
        devices = spec.get("simulated_devices", 1)
        device_speed = float(simulated) * devices
        speed = report.megapixels_per_second
        extra = {
            "simulated_devices": devices,
            "device_mpx_per_s": None if np.isinf(device_speed) else device_speed,
            "pipeline_mpx_per_s": round(speed, 4),
            "feeder_efficiency": None if np.isinf(device_speed) else round(speed / device_speed, 4),
            "cpu_ms_per_chunk": {
                name: round(1000 * seconds / max(chunks, 1), 2) for name, seconds in cpu.items()
            },
            "stage_cpu_ms_per_chunk": stages,
        }
    return {
        **extra,
        "worker_high_water_mib": list(workers.values()),
        **({"raw_in_process": raw} if adjacent else {}),
        "side": spec["side"],
        "megapixels": round(report.megapixels, 3),
        "seconds": round(report.seconds, 3),
        "cold_seconds": round(time.perf_counter() - started, 3),
        "runs_seconds": [round(r.seconds, 3) for r in reports],
        "forward_share": None if share is None else round(share, 4),
        "mpx_per_s": round(report.megapixels_per_second, 4),
        "chunks_computed": report.chunks_computed,
        "chunks_skipped": report.chunks_skipped,
        "tissue_fraction": spec.get("tissue_fraction"),
        "gpu_peak_mib": gpu,
    }


def process_seconds(client: Any) -> dict[str, float]:
    """CPU seconds so far (user and system) of this process (the driver, with the Dask
    scheduler of a LocalCluster) and of the client's worker processes together."""
    import psutil

    def own() -> float:
        times = psutil.Process().cpu_times()
        return times.user + times.system

    workers = client.run(own)
    here = own()
    return {"driver": here, "workers": sum(v for v in workers.values()) if workers else 0.0}


@contextlib.contextmanager
def device_seconds() -> Iterator[list[float]]:
    """Sum the seconds of :func:`unet.predict.device_step` (copies, forward pass, labels) in this
    process while inside: the documented place to wrap the device's part of a batch."""
    import unet.predict

    spent = [0.0]
    step = unet.predict.device_step

    def timed(*args: Any, **kwargs: Any) -> Any:
        begin = time.perf_counter()
        try:
            return step(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - begin

    unet.predict.device_step = timed
    try:
        yield spent
    finally:
        unet.predict.device_step = step


def worker_gpu_peak() -> float:
    """The peak GPU memory torch allocated in this process, MiB (run on a Dask worker)."""
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def measure_agreement(spec: dict[str, Any]) -> dict[str, Any]:
    """The fraction of mask pixels equal in fp32 and ``spec["precision"]`` on a generated
    nuclei image of side ``spec["side"]``."""
    from unet.predict.window import predict_array
    from unet.training.synthetic import NucleiScene, render

    checkpoint, model, device = prepared_model(spec)
    side = spec["side"]
    scene = NucleiScene(shape=(side, side), seed=7)
    raw, _ = render(scene, slice(0, side), slice(0, side))
    raw = np.repeat(raw, model.in_channels, axis=0)
    image = checkpoint.normalize(raw)
    masks = {}
    for precision in ("fp32", spec["precision"]):
        logits = predict_array(
            model,
            image,
            tile_size=spec["tile_size"],
            batch_size=spec["batch_size"],
            device=str(device),
            precision=precision,
        )
        masks[precision] = logits.argmax(0) if logits.shape[0] > 1 else logits[0] > 0
    equal = float(np.mean(masks["fp32"] == masks[spec["precision"]]))
    return {"side": side, "precision": spec["precision"], "equal_fraction": round(equal, 6)}


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the measurement ``spec["kind"]`` (``raw``, ``pipeline`` or ``agreement``) with the
    malloc settings of the pipeline's workers; add this process's peak RSS (``high_water_mib``)."""
    from unet.engine.allocator import reuse_freed_memory

    # Every measurement runs with the malloc settings the pipeline's workers use (see
    # unet.engine.allocator), so that none gains or loses by the allocator alone.
    reuse_freed_memory()
    kind = spec["kind"]
    run = {"raw": measure_raw, "pipeline": measure_pipeline, "agreement": measure_agreement}
    result = run[kind](spec)
    result["kind"] = kind
    result["loadavg"] = round(os.getloadavg()[0], 2)
    result["high_water_mib"] = high_water_mib()
    return result
