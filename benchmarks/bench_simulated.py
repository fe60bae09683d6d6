"""``unet bench --simulate-device MPX_PER_S``: the real pipeline fed to a simulated GPU.

Each measurement runs :func:`unet.engine.run.segment` on a generated OME-Zarr image in a fresh
process, with the GPU worker's plan (:func:`unet.engine.cluster.gpu_plan`: a worker process per
device, its chunks streamed) where only :func:`unet.predict.device_step` is replaced by
:class:`unet.bench.simulate.SimulatedDevice`, a wait without CPU or GIL for the time a device of
that speed needs for each batch. Torch runs on the CPU for anything real (loading the model).

- ``feeder_efficiency`` = the pipeline's Mpx/s over the devices' Mpx/s: whether the host side
  (read, decode, mirror, tiles, paste, write, pyramid, ledger, Dask) keeps the device busy;
- ``inf``: a device that costs nothing, so the pipeline's speed is the data path's ceiling;
- ``--simulated-devices 1,2``: one and two simulated GPUs (two worker processes); their speed
  ratio is what a second GPU adds.

Each result also has the CPU milliseconds per chunk of the driver process (with the Dask
scheduler) and of the workers, and per stage of a chunk (:mod:`unet.bench.stages`).

    unet bench --simulate-device 133 --sides 16384 --rounds 3 --workdir /tmp/benchwork
    unet bench --simulate-device inf --sides 16384 --rounds 3 --workdir /tmp/benchwork
    unet bench --simulate-device 60 --simulated-devices 1,2 --sides 8192 --workdir /tmp/benchwork
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench_report import target_entry, verdict_lines

from unet.bench.inputs import BENCH_CHUNK, bench_image

#: Targets of issue #17 (on the 2-core development machine).
TARGET_FEEDER_EFFICIENCY = 0.9
TARGET_CEILING_MPX_PER_S = 250.0
TARGET_TWO_DEVICES = 1.8


def run_simulated(
    *,
    mpx_per_s: float,
    devices: Sequence[int],
    sides: Sequence[int],
    checkpoint_path: str,
    geometry: Any,
    tile: int,
    batch_size: int,
    quick: bool,
    work: Path,
    measure: Callable[[dict[str, Any]], dict[str, Any]],
    in_channels: int,
    scheduler: str | None = None,
    processes_per_device: int = 1,
) -> dict[str, Any]:
    """The simulated pipeline runs for every device count and side; ``simulated`` (a list),
    the contract keys of the largest side with one device (``device_mpx_per_s``,
    ``pipeline_mpx_per_s``, ``feeder_efficiency``), ``ratios`` and ``targets``."""
    chunk = 256 if quick else BENCH_CHUNK
    # 2 x 2 chunks: every simulated device's worker loads the model before the clock starts.
    warmup = bench_image(work, 2 * chunk, chunk, in_channels)
    entries = []
    if scheduler is not None:
        devices = [_workers_of(scheduler)]  # each worker of the cluster is one device
    for count in devices:
        for side in sides:
            image = bench_image(work, side, chunk, in_channels)
            entries.append(
                measure(
                    {
                        "kind": "pipeline",
                        "device": "cpu",
                        "precision": "fp32",
                        "batch_size": batch_size,
                        "checkpoint": checkpoint_path,
                        "channels_last": True,
                        "in_process": False,
                        "tile_size": tile,
                        "image": str(image),
                        "warmup": str(warmup),
                        "output": str(work / f"mask-simulated-{count}-{side}.zarr"),
                        "side": side,
                        "simulate_device": mpx_per_s,
                        "simulated_devices": count,
                        "stages": True,
                        "scheduler": scheduler,
                        "processes_per_device": processes_per_device,
                    }
                )
            )
    ratios, targets = simulated_targets(entries, mpx_per_s)
    one = [e for e in entries if e["simulated_devices"] == min(devices)]
    main = max(one, key=lambda e: e["side"])
    return {
        "simulated": entries,
        "device_mpx_per_s": main["device_mpx_per_s"],
        "pipeline_mpx_per_s": main["pipeline_mpx_per_s"],
        "feeder_efficiency": main["feeder_efficiency"],
        "ratios": ratios,
        "targets": targets,
    }


def _workers_of(scheduler: str) -> int:
    from distributed import Client

    from unet.engine.cluster import check_scheduler
    from unet.engine.dispatch import cluster_workers

    check_scheduler(scheduler)
    with Client(scheduler, timeout="30s") as client:
        return len(cluster_workers(client))


def simulated_targets(
    entries: list[dict[str, Any]], mpx_per_s: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ratios and targets of simulated runs: feeder efficiency (a finite device), the data
    path's ceiling (``inf``), and two devices against one (when both ran)."""
    ratios: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    counts = sorted({e["simulated_devices"] for e in entries})
    largest = max(e["side"] for e in entries)
    by_count = {e["simulated_devices"]: e for e in entries if e["side"] == largest}
    one = by_count[counts[0]]
    ratios["pipeline_mpx_per_s"] = one["pipeline_mpx_per_s"]
    if math.isinf(mpx_per_s):
        targets[f"data path ceiling >= {TARGET_CEILING_MPX_PER_S:.0f} Mpx/s"] = target_entry(
            one["pipeline_mpx_per_s"], TARGET_CEILING_MPX_PER_S, higher=True, side=largest
        )
    else:
        ratios["feeder_efficiency"] = one["feeder_efficiency"]
        targets[f"feeder efficiency >= {TARGET_FEEDER_EFFICIENCY} at {mpx_per_s:g} Mpx/s"] = (
            target_entry(
                one["feeder_efficiency"], TARGET_FEEDER_EFFICIENCY, higher=True, side=largest
            )
        )
    if counts[0] == 1 and 2 in by_count:
        scaling = by_count[2]["pipeline_mpx_per_s"] / one["pipeline_mpx_per_s"]
        ratios["two_devices_over_one"] = round(scaling, 4)
        if not math.isinf(mpx_per_s):
            ratios["feeder_efficiency_two_devices"] = by_count[2]["feeder_efficiency"]
        targets[f"2 simulated devices >= {TARGET_TWO_DEVICES} x 1"] = target_entry(
            scaling, TARGET_TWO_DEVICES, higher=True, side=largest
        )
    return ratios, targets


def format_simulated(results: dict[str, Any]) -> str:
    """The simulated runs as a plain-text table (what ``unet bench --simulate-device`` prints)."""
    m, s = results["machine"], results["settings"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']}, zarr {m['zarr']}, "
        f"dask {m['dask']}; load average {m['loadavg_start'][0]:.2f} at start, "
        f"{m.get('loadavg_end', [0])[0]:.2f} at end",
        f"simulated device {s['simulate_device']} Mpx/s each, tile {s['tile_size']} (halo "
        f"{s['halo']}), batch {s['batch_size']}, chunk {s['chunk']}",
        "",
        f"{'devices':>7}{'side':>7}{'device Mpx/s':>14}{'pipeline Mpx/s':>16}{'efficiency':>12}"
        f"{'seconds':>9}{'driver ms/chunk':>17}{'workers ms/chunk':>18}",
    ]
    for entry in results["simulated"]:
        device = entry["device_mpx_per_s"]
        efficiency = entry["feeder_efficiency"]
        cpu = entry["cpu_ms_per_chunk"]
        lines.append(
            f"{entry['simulated_devices']:>7}{entry['side']:>7}"
            f"{(f'{device:.1f}' if device else 'inf'):>14}{entry['pipeline_mpx_per_s']:>16.2f}"
            f"{(f'{efficiency:.3f}' if efficiency else '-'):>12}{entry['seconds']:>9.2f}"
            f"{cpu['driver']:>17.2f}{cpu['workers']:>18.2f}"
        )
    stages = results["simulated"][-1].get("stage_cpu_ms_per_chunk")
    if stages:
        lines += ["", "per chunk, by stage (last run): wall ms / CPU ms of the calling thread"]
        for name, entry in stages.items():
            lines.append(f"  {name:<50}{entry['wall_ms']:>8.2f}{entry['cpu_ms']:>8.2f}")
    return "\n".join(lines + verdict_lines(results))
