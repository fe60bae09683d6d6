"""``unet bench``: the model alone, the full pipeline and MONAI, on the same device and settings.

Three measurements, each in a fresh Python subprocess, so that no measurement inherits another's
memory or warm caches. Peak RSS is the high-water mark the kernel keeps for each process
(``VmHWM``): the subprocess's own, plus its Dask worker processes' where it has any, plus what a
slow sampling of its process tree saw (nannies, a scheduler). Sampling every 50 ms, as before,
slowed the measurement itself by 4-6% on 2 cores: each wake-up preempts one of torch's threads,
and the others wait for it.

- **raw**: forward passes over a batch of random tiles, run as the pipeline runs them
  (:func:`unet.predict.forward`: in bands of rows on a CPU); useful output ``(T - 2 halo)^2 x batch``
  pixels per forward, 3 warm-up passes excluded, best of ``repeats``; swept over several tile
  sizes, and measured again just before and just after each pipeline run, whose ratio to the
  raw model is taken against the mean of those two (a shared machine's speed drifts over
  minutes). Those two run ``ADJACENT_RAW_PASSES`` passes each on the pipeline's own Dask worker,
  right before and after the timed run (and once more in processes of their own, for
  comparison), and the ratio takes their sustained speed (all pixels over all seconds), as the
  pipeline's own speed is: the best single pass of a shared machine is a moment the pipeline's
  whole run cannot match;
- **pipeline**: :func:`unet.engine.segment` from a generated image in OME-Zarr (1024 chunks) to an
  OME-Zarr mask through a Dask LocalCluster. The cluster is started and the worker's model loaded
  on a one-chunk warm-up image first; the timed run is ``report.seconds`` of the real image
  (``cold_seconds`` adds the cluster start);
- **monai**: ``monai.inferers.sliding_window_inference`` (overlap 0.25, gaussian) with a
  same-padding U-Net holding the same weights, on the same image held in memory (only the
  inference and the argmax are timed); the pipeline runs once more right after it, and the
  ratios to MONAI take the mean speed and the larger peak of the two pipeline runs. The
  background-skipping runs (a second or so each) are timed ``SKIP_RUNS`` times, median kept.

Plus the agreement of bf16 with fp32 masks (fraction of equal mask pixels) when bf16 is used, and
optionally the time of a background-skipping run on an image with a fraction of tissue.

    unet bench --sides 2048 4096 --json bench.json --plot bench.png
    python -m unet.bench --sides 2048 4096 --json bench.json --plot bench.png
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Seconds between two samples of a measurement's process tree RSS (see the module docstring).
SAMPLE_SECONDS = 1.0
#: Chunk side of the generated input images (and so of the mask).
BENCH_CHUNK = 1024
#: Pixels between the generated tissue and the chunk borders (see :func:`_image`).
TISSUE_INSET = 32
#: The paper's network (``--paper``).
PAPER_CONFIG = {"base_channels": 64, "depth": 4}
#: Output pixels per side of the tiles of the raw sweep (the tile adds 2 halo).
SWEEP_OUTPUTS = (128, 256, 512, 1024)
#: Timed passes of the raw model just before and after each pipeline run (about 2.5 s on
#: 2 CPU cores with the bundled model): long enough for a sustained speed to compare with the
#: pipeline's, short next to the machine's drift.
ADJACENT_RAW_PASSES = 10
#: Timed runs of each background-skipping measurement, median kept: at 4096^2 a run with 25 %
#: tissue takes about a second, and single runs gave 1.10 to 1.35 of proportional time.
SKIP_RUNS = 3
#: Targets of issue #7.
TARGET_PIPELINE_OVER_RAW = 0.9
TARGET_OVER_MONAI_SPEED = 2.0
TARGET_MONAI_MEMORY = 0.25
TARGET_RSS_GROWTH = 1.3
TARGET_AGREEMENT = 0.999


# ------------------------------------------------------------------------------------------
# Public entry point


def run_bench(
    *,
    device: str = "auto",
    precision: str = "auto",
    tile_size: int | None = None,
    batch_size: int = 4,
    model: str | None = None,
    base_channels: int | None = None,
    depth: int | None = None,
    paper: bool = False,
    sides: Sequence[int] = (2048, 4096),
    monai: bool = True,
    monai_side: int | None = None,
    tile_sweep: Sequence[int] | None = None,
    tissue_fraction: float | None = None,
    agreement_side: int = 1024,
    repeats: int = 3,
    channels_last: bool = True,
    quick: bool = False,
    plot: str | os.PathLike[str] | None = None,
    json_path: str | os.PathLike[str] | None = None,
    workdir: str | os.PathLike[str] | None = None,
    echo: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Measure raw model, pipeline and MONAI throughput and memory; return the results.

    Parameters
    ----------
    device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (the same for every measurement)
    precision: ``fp32``, ``bf16``, ``fp16`` or ``auto`` (resolved once, see
        :func:`unet.predict.resolve_precision`)
    tile_size: model input tile side; default the pipeline's default for 1024 chunks
    batch_size: tiles per forward pass (raw batch, pipeline ``--batch-size``, MONAI
        ``sw_batch_size``)
    model: a checkpoint (path or bundled name); default the bundled ``nuclei`` model (base 16,
        depth 3). ``base_channels``/``depth`` (or ``paper``: base 64, depth 4) use a random
        valid-padding U-Net of that shape instead.
    sides: image sides of the pipeline runs (square images)
    monai: also run MONAI's sliding_window_inference (skipped with a note when not importable)
    monai_side: image side of the MONAI comparison; default the largest of ``sides``
    tile_sweep: tile sizes of the raw sweep; default tiles keeping 128..1024 output pixels plus
        ``tile_size``
    tissue_fraction: also time a ``--skip-background`` run on an image of side ``sides[0]``
        with this fraction of tissue (a centred square), against the full image
    agreement_side: side of the image on which bf16/fp16 masks are compared with fp32
    repeats: timed repetitions of each raw forward (the best is kept)
    channels_last: run the raw and MONAI models in channels_last memory format
        (:func:`unet.predict.predict_window` always does)
    quick: tiny sizes and a tiny model, measured in this process (a smoke test, not a benchmark)
    plot: PNG file of throughput against tile size (raw) and image side (pipeline)
    json_path: write the returned dict as JSON there
    workdir: keep generated images there (reused by later runs); default a temporary directory
    echo: where the table goes (``None`` for silence)

    Returns
    -------
    dict with ``machine``, ``settings``, ``raw`` (list, one per tile size), ``pipeline`` (list,
    one per side), ``monai`` (dict or None), ``agreement`` (dict or None), ``background`` (dict
    or None), ``ratios`` and ``targets`` (name -> {value, target, met}).
    """
    from unet.predict.device import resolve_device, resolve_precision

    torch_device = resolve_device(device)
    precision = resolve_precision(precision, torch_device)
    if quick:
        sides = tuple(sides) if tuple(sides) != (2048, 4096) else (256, 512)
        repeats = 1
        agreement_side = min(agreement_side, 256)
    monai_available = _monai_importable()
    with tempfile.TemporaryDirectory(prefix="unet-bench-") as tmp:
        work = Path(workdir) if workdir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        checkpoint_path = _checkpoint_for(work, model, base_channels, depth, paper, quick)
        from unet.network.checkpoint import load_checkpoint
        from unet.tiling.tiles import default_tile_size

        checkpoint = load_checkpoint(checkpoint_path)
        geometry = checkpoint.model.geometry
        chunk = 256 if quick else BENCH_CHUNK
        tile = geometry.check_tile_size(tile_size or default_tile_size(geometry, chunk))
        sweep = sorted(set(tile_sweep or _default_sweep(geometry, quick)) | {tile})
        settings = {
            "device": str(torch_device),
            "precision": precision,
            "tile_size": tile,
            "batch_size": batch_size,
            "model": checkpoint_path,
            "architecture": checkpoint.model.config,
            "halo": geometry.halo,
            "chunk": chunk,
            "sides": list(sides),
            "channels_last": channels_last,
            "repeats": repeats,
            "quick": quick,
        }
        common = {
            "device": str(torch_device),
            "precision": precision,
            "batch_size": batch_size,
            "checkpoint": checkpoint_path,
            "channels_last": channels_last,
            "in_process": quick,
        }
        measure = _measure_here if quick else _measure_in_subprocess
        load = os.getloadavg()
        results: dict[str, Any] = {
            "machine": _machine(torch_device, load),
            "settings": settings,
            "raw": [],
            "pipeline": [],
            "monai": None,
            "agreement": None,
            "background": None,
        }
        for size in sweep:
            results["raw"].append(
                measure({**common, "kind": "raw", "tile_size": size, "repeats": repeats})
            )
        warmup = _image(work, chunk, chunk, checkpoint.model.in_channels)
        adjacent_raw = {
            **common,
            "kind": "raw",
            "tile_size": tile,
            "repeats": max(repeats, 1 if quick else ADJACENT_RAW_PASSES),
        }
        pipeline_specs: dict[int, dict[str, Any]] = {}
        for side in sides:
            image = _image(work, side, chunk, checkpoint.model.in_channels)
            # The raw model again just before and after: a shared machine's speed drifts by
            # 15% over minutes, so only measurements close in time make a fair ratio. Once in
            # processes of their own, and once inside the pipeline's process, on its worker,
            # right before and after the timed run (the target's ratio).
            before = measure(adjacent_raw)
            pipeline_specs[side] = {
                **common,
                "kind": "pipeline",
                "tile_size": tile,
                "image": str(image),
                "warmup": str(warmup),
                "output": str(work / f"mask-{side}.zarr"),
                "side": side,
            }
            entry = measure({**pipeline_specs[side], "adjacent_raw": adjacent_raw})
            after = measure(adjacent_raw)
            inside = entry.pop("raw_in_process")
            speed = entry["mpx_per_s"]
            sustained = [r["sustained_mpx_per_s"] for r in inside]
            best = [r["mpx_per_s"] for r in inside]
            separate = [before["sustained_mpx_per_s"], after["sustained_mpx_per_s"]]
            entry["raw_adjacent_mpx_per_s"] = best
            entry["raw_adjacent_sustained_mpx_per_s"] = sustained
            entry["raw_separate_sustained_mpx_per_s"] = separate
            entry["over_adjacent_raw"] = round(speed / (sum(sustained) / 2), 4)
            entry["over_adjacent_raw_best"] = round(speed / (sum(best) / 2), 4)
            entry["over_separate_raw"] = round(speed / (sum(separate) / 2), 4)
            results["pipeline"].append(entry)
        if tissue_fraction is not None:
            side = sides[0]
            partial = _image(work, side, chunk, checkpoint.model.in_channels, tissue_fraction)
            full = _image(work, side, chunk, checkpoint.model.in_channels)
            runs = []
            for path, fraction in ((full, 1.0), (partial, tissue_fraction)):
                runs.append(
                    measure(
                        {
                            **common,
                            "kind": "pipeline",
                            "tile_size": tile,
                            "image": str(path),
                            "warmup": str(warmup),
                            "output": str(work / f"mask-skip-{fraction}.zarr"),
                            "side": side,
                            "skip_background": True,
                            "tissue_fraction": fraction,
                            "runs": 1 if quick else SKIP_RUNS,
                        }
                    )
                )
            results["background"] = {"full": runs[0], "partial": runs[1]}
        if monai and monai_available:
            side = monai_side or max(sides)
            image = _image(work, side, chunk, checkpoint.model.in_channels)
            results["monai"] = measure(
                {
                    **common,
                    "kind": "monai",
                    "tile_size": tile,
                    "image": str(image),
                    "side": side,
                    "align": geometry.align,
                }
            )
            if side in pipeline_specs:
                # The pipeline once more, right after MONAI: the speed ratio takes the mean of
                # the two pipeline runs around it, the memory ratio the larger peak.
                results["monai"]["pipeline_after"] = measure(
                    {**pipeline_specs[side], "output": str(work / f"mask-{side}-again.zarr")}
                )
        elif monai:
            results["monai"] = {"skipped": "monai is not importable: pip install -e '.[bench]'"}
        if precision != "fp32":
            results["agreement"] = measure(
                {**common, "kind": "agreement", "side": agreement_side, "tile_size": tile}
            )
        results["machine"]["loadavg_end"] = list(os.getloadavg())
        results["ratios"], results["targets"] = _ratios_and_targets(results)
        if plot is not None:
            results["plot"] = str(_plot(results, Path(plot)))
        if json_path is not None:
            Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
        if echo is not None:
            echo(format_table(results))
    return results


# ------------------------------------------------------------------------------------------
# Measurements (run in a child process, or here with quick)


def _measure_in_subprocess(spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``spec`` in a fresh interpreter; sample its process tree's RSS from here."""
    import psutil

    command = [sys.executable, "-m", "unet.bench", "--child", json.dumps(spec)]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampled = 0
    root = psutil.Process(child.pid)
    while child.poll() is None:
        total = 0
        try:
            for process in [root, *root.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        sampled = max(sampled, total)
        time.sleep(SAMPLE_SECONDS)
    stdout, stderr = child.communicate()
    if child.returncode != 0:
        raise RuntimeError(
            f"benchmark step {spec['kind']} failed (exit {child.returncode}): "
            + stderr.strip()[-2000:]
        )
    result = json.loads(stdout.strip().splitlines()[-1])
    # The high-water marks are exact for each process; summed, they can only overstate a tree's
    # peak (its processes need not peak at once), and the sampling sees what they cannot.
    marks = result.pop("high_water_mib") + sum(result.pop("worker_high_water_mib", []))
    result["peak_rss_mib"] = round(max(marks, sampled / 2**20), 1)
    result["process_seconds"] = round(time.perf_counter() - started, 2)
    return result


def _measure_here(spec: dict[str, Any]) -> dict[str, Any]:
    """Quick mode: measure in this process; peak RSS is this process's lifetime peak."""
    import resource

    result = _child(spec)
    result.pop("high_water_mib")
    result.pop("worker_high_water_mib", None)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result["peak_rss_mib"] = round(peak / 2**20, 1)
    return result


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    from unet.engine.allocator import reuse_freed_memory

    # Every measurement runs with the malloc settings the pipeline's workers use (see
    # unet.engine.allocator), so that none gains or loses by the allocator alone.
    reuse_freed_memory()
    kind = spec["kind"]
    result = {
        "raw": _measure_raw,
        "pipeline": _measure_pipeline,
        "monai": _measure_monai,
        "agreement": _measure_agreement,
    }[kind](spec)
    result["kind"] = kind
    result["loadavg"] = round(os.getloadavg()[0], 2)
    result["high_water_mib"] = _high_water_mib()
    return result


def _high_water_mib() -> float:
    """This process's peak RSS (``VmHWM``) in MiB; 0 where /proc has no such line.

    Not ``getrusage``'s ``ru_maxrss``: Linux carries the forking parent's high-water mark into an
    exec'd child's.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _other_process_high_water() -> tuple[int, float]:
    """(pid, VmHWM in MiB) of the Dask worker this runs in."""
    return os.getpid(), _high_water_mib()


def _prepared_model(spec: dict[str, Any], padding: str = "valid"):
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


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gpu_peak(device) -> float | None:
    import torch

    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return None


def _measure_raw(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from unet.predict.device import autocast
    from unet.predict.step import forward

    _, model, device = _prepared_model(spec)
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
        _sync(device)
        for _ in range(spec["repeats"]):
            started = time.perf_counter()
            forward(model, inputs)
            _sync(device)
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
        "gpu_peak_mib": _gpu_peak(device),
    }


def _measure_pipeline(spec: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    from unet.config import SegmentParameters
    from unet.engine.cluster import dask_client, plan_cluster
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
    if spec.get("in_process"):
        from distributed import Client

        client_context = Client(processes=False, n_workers=1, threads_per_worker=1)
        workers_here = True
    else:
        plan = plan_cluster(parameters.device, parameters.workers, None)
        client_context = dask_client(plan)
        workers_here = not plan.processes
    # Masks of an earlier bench run in the same --workdir are deleted before the clock starts:
    # segment(overwrite=True) would delete them inside the timed run (0.1 s at 8192^2).
    for output in (spec["output"], spec["output"] + ".warmup"):
        shutil.rmtree(output, ignore_errors=True)
    with client_context as client:
        # Warm-up: the worker imports torch and loads the model (cached by checkpoint digest).
        segment(spec["warmup"], spec["output"] + ".warmup", parameters, client=client)
        adjacent = spec.get("adjacent_raw")
        raw = []
        if adjacent:  # the raw model on the pipeline's worker, right before the timed run
            raw.append(client.submit(_measure_raw, adjacent, pure=False).result())
        reports = []
        with _forward_seconds() as spent:
            for run in range(spec.get("runs", 1)):
                if run:
                    shutil.rmtree(spec["output"], ignore_errors=True)
                reports.append(segment(spec["image"], spec["output"], parameters, client=client))
        # The forward passes' share of the wall time: the pipeline against its own model, free
        # of the machine's drift (known where the worker runs in this process).
        share = spent[0] / sum(r.seconds for r in reports) if workers_here else None
        if adjacent:  # ... and right after it
            raw.append(client.submit(_measure_raw, adjacent, pure=False).result())
        report = sorted(reports, key=lambda r: r.seconds)[len(reports) // 2]
        gpu = None
        if spec["device"].startswith("cuda"):
            peaks = client.run(_worker_gpu_peak)
            gpu = max(peaks.values()) if peaks else None
        # Worker processes' own peaks; a worker in this process is counted by the caller.
        workers = {
            pid: mib
            for pid, mib in client.run(_other_process_high_water).values()
            if pid != os.getpid()
        }
    return {
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


@contextlib.contextmanager
def _forward_seconds() -> Iterator[list[float]]:
    """Sum the seconds of :func:`unet.predict.forward` in this process while inside."""
    import unet.predict

    spent = [0.0]
    forward = unet.predict.forward

    def timed(*args: Any, **kwargs: Any) -> Any:
        begin = time.perf_counter()
        try:
            return forward(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - begin

    unet.predict.forward = timed
    try:
        yield spent
    finally:
        unet.predict.forward = forward


def _worker_gpu_peak() -> float:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def _measure_monai(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from monai.inferers import sliding_window_inference

    from unet.io.source import open_image
    from unet.predict.device import autocast

    checkpoint, model, device = _prepared_model(spec, padding="same")
    align = spec["align"]
    roi = -(-spec["tile_size"] // align) * align  # the tile side rounded up to the pooling grid
    source = open_image(spec["image"])
    raw = source.read(slice(0, source.shape[1]), slice(0, source.shape[2]))
    image = torch.from_numpy(checkpoint.normalize(raw))[None]  # (1, C, H, W), held in memory
    del raw

    def infer(inputs):
        with torch.inference_mode(), autocast(device, spec["precision"]):
            logits = sliding_window_inference(
                inputs,
                roi_size=(roi, roi),
                sw_batch_size=spec["batch_size"],
                predictor=model,
                overlap=0.25,
                mode="gaussian",
                sw_device=device,
                device=device,
                progress=False,
            )
            mask = logits.argmax(1).to(torch.uint8).cpu()
        _sync(device)
        return mask

    infer(image[..., :roi, :roi])  # warm-up
    started = time.perf_counter()
    mask = infer(image)
    seconds = time.perf_counter() - started
    megapixels = image.shape[-2] * image.shape[-1] / 1e6
    return {
        "side": spec["side"],
        "roi_size": roi,
        "overlap": 0.25,
        "mode": "gaussian",
        "megapixels": round(megapixels, 3),
        "seconds": round(seconds, 3),
        "mpx_per_s": round(megapixels / seconds, 4),
        "foreground_fraction": round(float((mask > 0).float().mean()), 4),
        "gpu_peak_mib": _gpu_peak(device),
    }


def _measure_agreement(spec: dict[str, Any]) -> dict[str, Any]:
    from unet.predict.window import predict_array
    from unet.training.synthetic import NucleiScene, render

    checkpoint, model, device = _prepared_model(spec)
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


# ------------------------------------------------------------------------------------------
# Inputs


def _checkpoint_for(work: Path, model, base_channels, depth, paper, quick) -> str:
    from unet.network.checkpoint import resolve_checkpoint, save_checkpoint
    from unet.network.model import UNet

    if model is not None and not (base_channels or depth or paper):
        return str(resolve_checkpoint(model))
    if not (base_channels or depth or paper):
        if not quick:
            return str(resolve_checkpoint("nuclei"))
        base_channels, depth = 4, 2
    config = dict(PAPER_CONFIG) if paper else {"base_channels": 16, "depth": 3}
    if base_channels:
        config["base_channels"] = base_channels
    if depth:
        config["depth"] = depth
    import torch

    torch.manual_seed(0)
    path = work / f"random-b{config['base_channels']}-d{config['depth']}.safetensors"
    save_checkpoint(path, UNet(**config), mean=43.85, std=48.45)
    return str(path)


def _default_sweep(geometry, quick: bool) -> list[int]:
    outputs = (64, 128) if quick else SWEEP_OUTPUTS
    return [geometry.valid_at_least(n + 2 * geometry.context) for n in outputs]


def _image(work: Path, side: int, chunk: int, channels: int, tissue: float | None = None) -> Path:
    """An OME-Zarr nuclei image of ``side``^2 with ``chunk`` chunks, generated once per workdir.

    With ``tissue`` only a centred square of that area fraction (on the chunk grid) holds the
    scene, inset by ``TISSUE_INSET`` pixels from the chunk borders (skipping keeps a margin of
    a few pixels around tissue, which would otherwise reach the neighbouring chunks); the rest
    stays 0.
    """
    from unet.io.omezarr import create_image
    from unet.training.synthetic import NucleiScene

    name = f"nuclei-{side}-c{chunk}-ch{channels}" + (
        f"-t{tissue}-i{TISSUE_INSET}" if tissue is not None else ""
    )
    path = work / f"{name}.zarr"
    if (path / ".complete").exists():
        return path
    array = create_image(path, (channels, side, side), "uint8", (chunk, chunk), overwrite=True)
    scene = NucleiScene(shape=(side, side), seed=0)
    lo, hi = 0, side
    if tissue is not None:
        square = int(round(side * tissue**0.5 / chunk)) * chunk
        lo = (side - square) // 2 // chunk * chunk
        hi = lo + square
    for y in range(lo, hi, chunk):
        for x in range(lo, hi, chunk):
            rows, cols = slice(y, min(y + chunk, side)), slice(x, min(x + chunk, side))
            block, _ = scene.render(rows, cols)
            if tissue is not None:
                inside_y = (np.arange(rows.start, rows.stop) >= lo + TISSUE_INSET) & (
                    np.arange(rows.start, rows.stop) < hi - TISSUE_INSET
                )
                inside_x = (np.arange(cols.start, cols.stop) >= lo + TISSUE_INSET) & (
                    np.arange(cols.start, cols.stop) < hi - TISSUE_INSET
                )
                block = block * (inside_y[:, None] & inside_x[None, :])
            array[:, rows, cols] = np.repeat(block, channels, axis=0)
    (path / ".complete").write_text("")
    return path


def _monai_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("monai") is not None


def _machine(device, load) -> dict[str, Any]:
    import dask
    import torch
    import zarr

    cpu = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "zarr": zarr.__version__,
        "dask": dask.__version__,
        "loadavg_start": [round(v, 2) for v in load],
    }
    try:
        import monai

        info["monai"] = monai.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ------------------------------------------------------------------------------------------
# Report


def _ratios_and_targets(results: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    tile = results["settings"]["tile_size"]
    raw = next(r for r in results["raw"] if r["tile_size"] == tile)
    pipelines = results["pipeline"]
    monai = results["monai"] if results["monai"] and "skipped" not in results["monai"] else None
    ratios: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    if pipelines:
        best = max(pipelines, key=lambda p: p["side"])
        ratios["pipeline_over_raw_sweep"] = round(best["mpx_per_s"] / raw["mpx_per_s"], 3)
        # Against the raw model measured just before and after this very run (see run_bench).
        ratios["pipeline_over_raw"] = best.get(
            "over_adjacent_raw", ratios["pipeline_over_raw_sweep"]
        )
        if "over_adjacent_raw_best" in best:
            ratios["pipeline_over_raw_best_pass"] = best["over_adjacent_raw_best"]
        if "over_separate_raw" in best:
            ratios["pipeline_over_raw_separate"] = best["over_separate_raw"]
        if best.get("forward_share") is not None:
            ratios["pipeline_forward_share"] = best["forward_share"]
        targets["pipeline >= 0.9 x raw model"] = _target(
            ratios["pipeline_over_raw"], TARGET_PIPELINE_OVER_RAW, higher=True, side=best["side"]
        )
    if len(pipelines) >= 2:
        small = min(pipelines, key=lambda p: p["side"])
        large = max(pipelines, key=lambda p: p["side"])
        growth = large["peak_rss_mib"] / small["peak_rss_mib"]
        ratios[f"peak_rss_{large['side']}_over_{small['side']}"] = round(growth, 3)
        targets["peak RSS flat in image size (<= 1.3)"] = _target(
            growth, TARGET_RSS_GROWTH, higher=False, sides=[small["side"], large["side"]]
        )
    if monai is not None:
        same = [p for p in pipelines if p["side"] == monai["side"]]
        if same:
            pipe = same[0]
            runs = [pipe, *([monai["pipeline_after"]] if monai.get("pipeline_after") else [])]
            speed = sum(r["mpx_per_s"] for r in runs) / len(runs) / monai["mpx_per_s"]
            memory = max(r["peak_rss_mib"] for r in runs) / monai["peak_rss_mib"]
            ratios["pipeline_over_monai_mpx_per_s"] = round(speed, 3)
            ratios["pipeline_over_monai_peak_rss"] = round(memory, 3)
            targets[">= 2x MONAI Mpx/s"] = _target(
                speed, TARGET_OVER_MONAI_SPEED, higher=True, side=monai["side"]
            )
            targets["<= 1/4 of MONAI peak RSS"] = _target(
                memory, TARGET_MONAI_MEMORY, higher=False, side=monai["side"]
            )
            if pipe.get("gpu_peak_mib") and monai.get("gpu_peak_mib"):
                ratios["pipeline_over_monai_gpu_peak"] = round(
                    pipe["gpu_peak_mib"] / monai["gpu_peak_mib"], 3
                )
            if monai["side"] < 8192:
                for name in (">= 2x MONAI Mpx/s", "<= 1/4 of MONAI peak RSS"):
                    targets[name]["note"] = "the target is stated for 8192^2; measured smaller"
    background = results.get("background")
    if background:
        full, partial = background["full"], background["partial"]
        fraction = partial["tissue_fraction"]
        proportional = (partial["seconds"] / full["seconds"]) / fraction
        ratios["skip_time_over_tissue_share"] = round(proportional, 3)
        targets["time proportional to tissue area (ratio <= 1.3)"] = _target(
            proportional, 1.3, higher=False, tissue_fraction=fraction
        )
    agreement = results.get("agreement")
    if agreement:
        targets[f"{agreement['precision']} masks equal fp32 (>= 99.9%)"] = _target(
            agreement["equal_fraction"], TARGET_AGREEMENT, higher=True
        )
    return ratios, targets


def _target(value: float, target: float, *, higher: bool, **context: Any) -> dict[str, Any]:
    met = value >= target if higher else value <= target
    return {
        "value": round(value, 4),
        "target": target,
        "higher": higher,
        "met": bool(met),
        **context,
    }


def format_table(results: dict[str, Any]) -> str:
    """The results as a plain-text table (what ``unet bench`` prints)."""
    m, s = results["machine"], results["settings"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores{', ' + m['gpu'] if m.get('gpu') else ''}; "
        f"torch {m['torch']}, zarr {m['zarr']}, dask {m['dask']}; "
        f"load average {m['loadavg_start'][0]:.2f} at start, "
        f"{m.get('loadavg_end', [0])[0]:.2f} at end",
        f"device {s['device']}, precision {s['precision']}, tile {s['tile_size']} "
        f"(halo {s['halo']}), batch {s['batch_size']}, model {s['architecture']}, "
        f"channels_last {s['channels_last']}",
        "",
        f"{'measurement':<34}{'Mpx/s':>9}{'seconds':>10}{'peak RSS MiB':>14}{'GPU MiB':>9}",
    ]

    def row(name, entry, seconds_key="seconds"):
        gpu = entry.get("gpu_peak_mib")
        lines.append(
            f"{name:<34}{entry['mpx_per_s']:>9.3f}{entry.get(seconds_key, 0):>10.2f}"
            f"{entry['peak_rss_mib']:>14.0f}{(f'{gpu:.0f}' if gpu else '-'):>9}"
        )

    for raw in results["raw"]:
        mark = " *" if raw["tile_size"] == s["tile_size"] else ""
        row(f"raw model, tile {raw['tile_size']}{mark}", raw, "seconds_per_forward")
    for pipe in results["pipeline"]:
        row(f"pipeline {pipe['side']}^2", pipe)
        if "raw_adjacent_mpx_per_s" in pipe:
            before, after = pipe.get("raw_adjacent_sustained_mpx_per_s", [0.0, 0.0])
            best_before, best_after = pipe["raw_adjacent_mpx_per_s"]
            lines.append(
                f"  raw model just before / after it, on its worker: {before:.3f} / {after:.3f}"
                f" Mpx/s sustained, {best_before:.3f} / {best_after:.3f} best pass (pipeline "
                f"{pipe['over_adjacent_raw']:.3f} / {pipe.get('over_adjacent_raw_best', 0):.3f}"
                " of their means)"
            )
            if pipe.get("forward_share") is not None:
                lines.append(
                    f"  forward passes: {pipe['forward_share']:.3f} of its wall time (the "
                    "pipeline against its own model, free of the machine's drift)"
                )
            if "raw_separate_sustained_mpx_per_s" in pipe:
                before, after = pipe["raw_separate_sustained_mpx_per_s"]
                lines.append(
                    f"  raw model before / after it in processes of its own: {before:.3f} / "
                    f"{after:.3f} Mpx/s sustained (pipeline {pipe['over_separate_raw']:.3f})"
                )
    monai = results.get("monai")
    if monai and "skipped" not in monai:
        row(f"MONAI sliding window {monai['side']}^2", monai)
        if monai.get("pipeline_after"):
            row(f"pipeline {monai['side']}^2 again, after MONAI", monai["pipeline_after"])
    elif monai:
        lines.append(f"MONAI: skipped ({monai['skipped']})")
    background = results.get("background")
    if background:
        for key in ("full", "partial"):
            entry = background[key]
            row(f"skip-background, tissue {entry['tissue_fraction']:.2f}", entry)
    agreement = results.get("agreement")
    if agreement:
        lines.append(
            f"{agreement['precision']} vs fp32 masks on {agreement['side']}^2: "
            f"{100 * agreement['equal_fraction']:.3f}% of pixels equal"
        )
    lines.append("")
    for name, value in results["ratios"].items():
        lines.append(f"{name}: {value}")
    lines.append("")
    for name, target in results["targets"].items():
        verdict = "met" if target["met"] else "MISSED"
        note = f" ({target['note']})" if target.get("note") else ""
        lines.append(f"target {name}: {target['value']} -> {verdict}{note}")
    return "\n".join(lines)


def _plot(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    raw = results["raw"]
    left.plot([r["tile_size"] for r in raw], [r["mpx_per_s"] for r in raw], "o-", label="raw model")
    left.set_xlabel("tile side (input pixels)")
    left.set_ylabel("useful output Mpx/s")
    left.set_title("raw model against tile size")
    left.grid(True, alpha=0.3)
    left.legend()
    pipes = results["pipeline"]
    right.plot([p["side"] for p in pipes], [p["mpx_per_s"] for p in pipes], "o-", label="pipeline")
    tile = results["settings"]["tile_size"]
    reference = next(r for r in raw if r["tile_size"] == tile)["mpx_per_s"]
    right.axhline(reference, color="grey", linestyle="--", label=f"raw model, tile {tile}")
    monai = results.get("monai")
    if monai and "skipped" not in monai:
        right.plot([monai["side"]], [monai["mpx_per_s"]], "s", label="MONAI sliding window")
    right.set_xlabel("image side (pixels)")
    right.set_ylabel("Mpx/s")
    right.set_title("pipeline against image size")
    right.set_ylim(bottom=0)
    right.grid(True, alpha=0.3)
    right.legend()
    s = results["settings"]
    figure.suptitle(f"{s['device']}, {s['precision']}, batch {s['batch_size']}")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


# ------------------------------------------------------------------------------------------
# Several rounds


def run_rounds(
    rounds: int,
    *,
    plot: str | os.PathLike[str] | None = None,
    json_path: str | os.PathLike[str] | None = None,
    echo: Callable[[str], None] | None = print,
    **settings: Any,
) -> dict[str, Any]:
    """:func:`run_bench` ``rounds`` times in a row; each ratio and target is taken on the median
    of the rounds.

    A single round's speed ratios move by about 5% on a shared machine whose speed drifts by
    10-15% within a minute; the median of a few rounds says what the code does.

    Parameters
    ----------
    rounds: how many times to run the whole benchmark (1: just :func:`run_bench`)
    plot: PNG of the first round
    json_path: write the summary there: ``rounds`` (each round's results), ``ratios`` (medians),
        ``ratio_ranges`` (name -> [lowest, highest]) and ``targets`` (on the medians, with
        ``rounds_met``)
    settings: the keyword arguments of :func:`run_bench`
    """
    import statistics

    from unet.errors import InvalidParameter

    if rounds < 1:
        raise InvalidParameter(f"rounds must be at least 1, got {rounds}")
    if rounds == 1:
        return run_bench(plot=plot, json_path=json_path, echo=echo, **settings)
    each = []
    for number in range(rounds):
        if echo is not None:
            echo(f"round {number + 1} of {rounds}")
        each.append(run_bench(plot=plot if number == 0 else None, echo=echo, **settings))
    names = [name for name in each[0]["ratios"] if all(name in r["ratios"] for r in each)]
    ratios = {name: round(statistics.median(r["ratios"][name] for r in each), 4) for name in names}
    ranges = {
        name: [min(r["ratios"][name] for r in each), max(r["ratios"][name] for r in each)]
        for name in names
    }
    targets = {}
    for name, first in each[0]["targets"].items():
        values = [r["targets"][name]["value"] for r in each if name in r["targets"]]
        targets[name] = {
            **_target(statistics.median(values), first["target"], higher=first["higher"]),
            "rounds_met": sum(r["targets"][name]["met"] for r in each if name in r["targets"]),
            "rounds": len(values),
        }
    summary = {
        "machine": each[0]["machine"],
        "settings": {**each[0]["settings"], "rounds": rounds},
        "rounds": each,
        "ratios": ratios,
        "ratio_ranges": ranges,
        "targets": targets,
    }
    if json_path is not None:
        Path(json_path).write_text(json.dumps(summary, indent=2) + "\n")
    if echo is not None:
        echo(format_rounds(summary))
    return summary


def format_rounds(summary: dict[str, Any]) -> str:
    """The medians of several rounds and how many rounds met each target."""
    rounds = summary["settings"]["rounds"]
    lines = [f"medians of {rounds} rounds (lowest - highest):"]
    for name, value in summary["ratios"].items():
        low, high = summary["ratio_ranges"][name]
        lines.append(f"{name}: {value} ({low} - {high})")
    lines.append("")
    for name, target in summary["targets"].items():
        verdict = "met" if target["met"] else "MISSED"
        lines.append(
            f"target {name}: median {target['value']} -> {verdict} "
            f"(met in {target['rounds_met']} of {target['rounds']} rounds)"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# python -m unet.bench


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--tile-size", type=int)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--model")
    parser.add_argument("--base-channels", type=int)
    parser.add_argument("--depth", type=int)
    parser.add_argument("--paper", action="store_true")
    parser.add_argument("--sides", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--monai", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--monai-side", type=int)
    parser.add_argument("--tile-sweep", type=int, nargs="+")
    parser.add_argument("--tissue-fraction", type=float)
    parser.add_argument("--agreement-side", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--plot")
    parser.add_argument("--json")
    parser.add_argument("--workdir")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))), flush=True)
        return
    run_rounds(
        args.rounds,
        device=args.device,
        precision=args.precision,
        tile_size=args.tile_size,
        batch_size=args.batch_size,
        model=args.model,
        base_channels=args.base_channels,
        depth=args.depth,
        paper=args.paper,
        sides=tuple(args.sides),
        monai=args.monai,
        monai_side=args.monai_side,
        tile_sweep=args.tile_sweep,
        tissue_fraction=args.tissue_fraction,
        agreement_side=args.agreement_side,
        repeats=args.repeats,
        channels_last=args.channels_last,
        quick=args.quick,
        plot=args.plot,
        json_path=args.json,
        workdir=args.workdir,
    )


if __name__ == "__main__":
    main()
