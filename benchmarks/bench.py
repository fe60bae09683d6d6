"""The benchmark harness that ``unet bench`` runs: the model alone, the full pipeline and MONAI,
on the same device and settings.

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

    unet bench --sides 2048,4096 --json bench.json --plot bench.png
    python benchmarks/bench.py --sides 2048,4096 --json bench.json --plot bench.png

The measurements themselves are :mod:`unet.bench.measure` (public, in the package); this file
orchestrates them, each in a fresh process (``bench_child.py``), and ``bench_report.py`` turns
their results into ratios, targets, a table and a plot.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench_child import measure_child
from bench_report import format_rounds, format_table, plot_results, ratios_and_targets, target_entry
from bench_simulated import format_simulated, run_simulated

from unet.bench.inputs import BENCH_CHUNK, bench_checkpoint, bench_image

#: The script that runs one measurement in a fresh process.
CHILD = Path(__file__).with_name("bench_child.py")
#: Seconds between two samples of a measurement's process tree RSS (see the module docstring).
SAMPLE_SECONDS = 1.0


#: Output pixels per side of the tiles of the raw sweep (the tile adds 2 halo).
SWEEP_OUTPUTS = (128, 256, 512, 1024)


#: Timed passes of the raw model just before and after each pipeline run (about 2.5 s on
#: 2 CPU cores with the bundled model): long enough for a sustained speed to compare with the
#: pipeline's, short next to the machine's drift.
ADJACENT_RAW_PASSES = 10


#: Timed runs of each background-skipping measurement, median kept: at 4096^2 a run with 25 %
#: tissue takes about a second, and single runs gave 1.10 to 1.35 of proportional time.
SKIP_RUNS = 3


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
    simulate_device: float | None = None,
    simulated_devices: Sequence[int] = (1,),
    processes_per_device: int = 1,
    scheduler: str | None = None,
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
    simulate_device: instead of all the above, run the pipeline on ``sides`` with the GPU
        worker's plan and each device simulated at this speed (Mpx/s; ``math.inf``: a device
        that costs nothing), see ``bench_simulated.py``; each run in a fresh process
    simulated_devices: simulated GPUs (worker processes) of each simulated run, one run per
        count
    processes_per_device: with ``simulate_device``, worker processes per simulated device
        (taking turns on it, as processes sharing one GPU do)
    scheduler: with ``simulate_device``, run on this existing Dask cluster instead: each of
        its workers is one simulated device (``simulated_devices`` is then its worker count)
    plot: PNG file of throughput against tile size (raw) and image side (pipeline)
    json_path: write the returned dict as JSON there
    workdir: keep generated images there (reused by later runs); default a temporary directory
    echo: where the table goes (``None`` for silence)

    Returns
    -------
    dict with ``machine``, ``settings``, ``raw`` (list, one per tile size), ``pipeline`` (list,
    one per side), ``monai`` (dict or None), ``agreement`` (dict or None), ``background`` (dict
    or None), ``ratios`` and ``targets`` (name -> {value, target, met}). With
    ``simulate_device``: ``machine``, ``settings``, ``simulated`` (list, one per device count
    and side), ``device_mpx_per_s``, ``pipeline_mpx_per_s`` and ``feeder_efficiency`` (one
    device, the largest side; the first and last None for ``inf``), ``ratios`` and ``targets``.
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
        checkpoint_path = bench_checkpoint(work, model, base_channels, depth, paper, quick)
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
        measure = measure_here if quick else measure_in_subprocess
        load = os.getloadavg()
        if simulate_device is not None:
            settings.update(
                simulate_device=simulate_device,
                simulated_devices=list(simulated_devices),
                processes_per_device=processes_per_device,
                scheduler=scheduler,
            )
            # Each in a fresh process, quick or not: the GPU plan starts worker processes.
            results = {
                "machine": _machine(torch_device, load),
                "settings": settings,
                **run_simulated(
                    mpx_per_s=simulate_device,
                    devices=simulated_devices,
                    sides=sides,
                    checkpoint_path=checkpoint_path,
                    geometry=geometry,
                    tile=tile,
                    batch_size=batch_size,
                    quick=quick,
                    work=work,
                    measure=measure_in_subprocess,
                    in_channels=checkpoint.model.in_channels,
                    scheduler=scheduler,
                    processes_per_device=processes_per_device,
                ),
            }
            results["machine"]["loadavg_end"] = list(os.getloadavg())
            if json_path is not None:
                Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
            if echo is not None:
                echo(format_simulated(results))
            return results
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
        # 2 x 2 chunks on a GPU machine: every GPU's worker loads the model before the clock
        # starts (one chunk warmed one worker, and the others loaded theirs inside the run).
        warm_side = 2 * chunk if torch_device.type == "cuda" else chunk
        warmup = bench_image(work, warm_side, chunk, checkpoint.model.in_channels)
        adjacent_raw = {
            **common,
            "kind": "raw",
            "tile_size": tile,
            "repeats": max(repeats, 1 if quick else ADJACENT_RAW_PASSES),
        }
        pipeline_specs: dict[int, dict[str, Any]] = {}
        for side in sides:
            image = bench_image(work, side, chunk, checkpoint.model.in_channels)
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
            partial = bench_image(work, side, chunk, checkpoint.model.in_channels, tissue_fraction)
            full = bench_image(work, side, chunk, checkpoint.model.in_channels)
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
            image = bench_image(work, side, chunk, checkpoint.model.in_channels)
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
        results["ratios"], results["targets"] = ratios_and_targets(results)
        if plot is not None:
            results["plot"] = str(plot_results(results, Path(plot)))
        if json_path is not None:
            Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
        if echo is not None:
            echo(format_table(results))
    return results


def measure_in_subprocess(spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``spec`` in a fresh interpreter; sample its process tree's RSS from here."""
    import psutil

    command = [sys.executable, str(CHILD), json.dumps(spec)]
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


def measure_here(spec: dict[str, Any]) -> dict[str, Any]:
    """Quick mode: measure in this process; peak RSS is this process's lifetime peak."""
    import resource

    result = measure_child(spec)  # from bench_child.py, in this process
    result.pop("high_water_mib")
    result.pop("worker_high_water_mib", None)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result["peak_rss_mib"] = round(peak / 2**20, 1)
    return result


def _default_sweep(geometry, quick: bool) -> list[int]:
    outputs = (64, 128) if quick else SWEEP_OUTPUTS
    return [geometry.valid_at_least(n + 2 * geometry.context) for n in outputs]


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
            **target_entry(statistics.median(values), first["target"], higher=first["higher"]),
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
    for key in SIMULATED_KEYS:  # a simulated run's contract keys: their medians
        values = [r[key] for r in each if r.get(key) is not None]
        if key in each[0]:
            summary[key] = round(statistics.median(values), 4) if values else None
    if json_path is not None:
        Path(json_path).write_text(json.dumps(summary, indent=2) + "\n")
    if echo is not None:
        echo(format_rounds(summary))
    return summary


#: The keys a simulated run reports (issue #17's contract).
SIMULATED_KEYS = ("device_mpx_per_s", "pipeline_mpx_per_s", "feeder_efficiency")


def speed(text: str) -> float:
    """``"133"`` -> 133.0, ``"inf"`` -> ``math.inf``: a simulated device's Mpx/s."""
    from unet.bench.simulate import parse_speed

    try:
        return parse_speed(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def numbers(text: str) -> tuple[int, ...]:
    """``"4096,8192"`` -> ``(4096, 8192)``."""
    try:
        return tuple(int(value) for value in text.split(",") if value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers"
        ) from None


def parser() -> argparse.ArgumentParser:
    """The command line of ``unet bench`` (and of this script)."""
    options = argparse.ArgumentParser(
        prog="unet bench",
        description="Benchmark the raw model, the full pipeline and MONAI on the same device and "
        "settings; see benchmarks/README.md.",
    )
    add = options.add_argument
    add("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add("--precision", default="auto", help="fp32, bf16, fp16 or auto")
    add("--tile-size", type=int, help="model tile side (valid size)")
    add("--batch-size", type=int, default=4, help="tiles per forward pass")
    add("--model", help="checkpoint (default the bundled nuclei model)")
    add("--base-channels", type=int, help="random model of this width instead")
    add("--depth", type=int, help="random model of this depth instead")
    add("--paper", action="store_true", help="random paper U-Net (base 64, depth 4)")
    add("--sides", type=numbers, default=(2048, 4096), help="pipeline image sides, comma-separated")
    add("--monai", action=argparse.BooleanOptionalAction, default=True, help="compare with MONAI")
    add("--monai-side", type=int, help="MONAI image side (default the largest side)")
    add("--tile-sweep", type=numbers, help="raw-model tile sizes, comma-separated")
    add("--tissue-fraction", type=float, help="also time --skip-background at this tissue share")
    add("--agreement-side", type=int, default=1024, help="image side of the precision check")
    add("--repeats", type=int, default=3, help="timed passes of each raw forward")
    add("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    add("--quick", action="store_true", help="tiny sizes, in-process (smoke test)")
    add("--plot", help="write a PNG plot here")
    add("--json", help="write JSON here")
    add("--workdir", help="keep generated images here between runs")
    add("--rounds", type=int, default=1, help="run it all this many times; targets on the medians")
    add(
        "--simulate-device",
        type=speed,
        metavar="MPX_PER_S",
        help="only the pipeline, with the GPU worker's plan and each device simulated at this "
        "speed (inf: a device that costs nothing); reports feeder_efficiency",
    )
    add(
        "--simulated-devices",
        type=numbers,
        default=(1,),
        help="simulated GPUs (worker processes) per simulated run, comma-separated (e.g. 1,2)",
    )
    add(
        "--processes-per-device",
        type=int,
        default=1,
        help="with --simulate-device: worker processes per simulated device (taking turns on it)",
    )
    add(
        "--scheduler",
        metavar="ADDRESS",
        help="with --simulate-device: run on this existing Dask cluster (tcp://HOST:PORT), "
        "each of its workers one simulated device",
    )
    return options


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
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
        simulate_device=args.simulate_device,
        simulated_devices=tuple(args.simulated_devices),
        scheduler=args.scheduler,
        processes_per_device=args.processes_per_device,
        plot=args.plot,
        json_path=args.json,
        workdir=args.workdir,
    )


if __name__ == "__main__":
    main()
