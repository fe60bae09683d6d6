"""What ``unet segment`` costs beyond the engine, and how fast a folder of small images goes.

Two measurements, each against its own baseline in the same run (the machine's load changes
between runs, so figures of different runs are not compared):

``overhead``: ``unet segment IMAGE OUT --device cpu`` without a Prefect server against the same
engine call in Python (``unet.engine.run.segment`` with its own cluster), each a fresh process:
wall seconds and the peak resident memory of the process tree, alternating, ``--repeats`` times.

``folder``: ``--images`` generated images of ``--side`` pixels (PNG, as a lab's folder holds
them). The baseline is the engine one image at a time on their ingested copies, with one warm
client for all (``unet.engine.run.segment`` per image, the loop's wall time); against it the
folder run as a user starts it (``unet segment FOLDER MASKS`` without a Prefect server: process
start, cluster start, ingest and previews included) and, with ``--api-url``, the same tracked by
that server; the passes alternate, ``--repeats`` times.

    python benchmarks/local_run.py overhead --side 1024 --repeats 3
    python benchmarks/local_run.py folder --images 60 --side 384x512 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

UNET = str(Path(sys.executable).with_name("unet"))

ENGINE = """
import sys
from unet.config import SegmentParameters
from unet.engine.run import segment
segment(sys.argv[1], sys.argv[2], SegmentParameters(model="nuclei", device="cpu"))
"""


def tree_peak(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak MiB of the process tree) of ``command``, sampled every 20 ms."""
    started = time.perf_counter()
    process = psutil.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while process.poll() is None:
        total = 0
        for member in [process, *process.children(recursive=True)]:
            try:
                total += member.memory_info().rss
            except psutil.Error:
                pass
        peak = max(peak, total)
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{command} failed: {process.stderr.read().decode()[-2000:]}")
    return seconds, peak / 2**20


def untracked_environment(home: Path) -> dict[str, str]:
    """The environment of a user without a Prefect server: no API URL, an empty Prefect home."""
    env = {**os.environ, "PREFECT_HOME": str(home)}
    for name in ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH"):
        env.pop(name, None)
    return env


def overhead(side: int, repeats: int, work: Path) -> dict:
    from unet.bench.inputs import bench_image

    image = str(bench_image(work, side, chunk=1024, channels=1))
    env = untracked_environment(work / "prefect-home")
    runs: dict[str, list[tuple[float, float]]] = {"engine": [], "unet segment": []}
    for repeat in range(repeats):
        for name in ("engine", "unet segment") if repeat % 2 == 0 else ("unet segment", "engine"):
            out = work / f"out-{name.replace(' ', '-')}-{repeat}.zarr"
            command = (
                [sys.executable, "-c", ENGINE, image, str(out)]
                if name == "engine"
                else [UNET, "segment", image, str(out), "--device", "cpu"]
            )
            runs[name].append(tree_peak(command, env))
    median = {name: _medians(values) for name, values in runs.items()}
    return {
        "side": side,
        "runs": runs,
        "median": median,
        "extra_seconds": round(median["unet segment"][0] - median["engine"][0], 2),
        "extra_mib": round(median["unet segment"][1] - median["engine"][1], 1),
    }


def folder(
    count: int, shape: tuple[int, int], repeats: int, work: Path, api_url: str | None
) -> dict:
    from unet.config import SegmentParameters
    from unet.engine.cluster import dask_client, plan_cluster
    from unet.engine.run import segment
    from unet.io.ingest import ingest

    images = _write_images(work / "images", count, shape)
    ingested = work / "ingested"
    for path in images:
        ingest(str(path), str(ingested / f"{path.stem}.zarr"), progress=False)
    parameters = SegmentParameters(model="nuclei", device="cpu")
    plan = plan_cluster(parameters.device, parameters.workers, parameters.scheduler)
    env = untracked_environment(work / "prefect-home")
    folder_runs = {"unet segment FOLDER (untracked)": env}
    if api_url:
        folder_runs["unet segment FOLDER (tracked)"] = {**env, "PREFECT_API_URL": api_url}
    seconds: dict[str, list[float]] = {"engine one at a time": [], **{k: [] for k in folder_runs}}
    peaks: dict[str, list[float]] = {k: [] for k in folder_runs}
    with dask_client(plan) as client:
        warm = str(ingested / f"{images[0].stem}.zarr")
        segment(warm, str(work / "warm.zarr"), parameters, client=client)  # model in the worker
        for repeat in range(repeats):
            # Alternating, so that a change of the machine's load meets both sides alike.
            order = ["engine one at a time", *folder_runs]
            for name in order if repeat % 2 == 0 else order[::-1]:
                out = work / f"{''.join(c for c in name if c.isalnum())}-{repeat}"
                if name == "engine one at a time":
                    started = time.perf_counter()
                    for p in images:
                        segment(
                            str(ingested / f"{p.stem}.zarr"),
                            str(out / f"{p.stem}.zarr"),
                            parameters,
                            client=client,
                        )
                    seconds[name].append(time.perf_counter() - started)
                    continue
                command = [UNET, "segment", str(work / "images"), str(out), "--device", "cpu"]
                wall, peak = tree_peak(command, folder_runs[name])
                seconds[name].append(wall)
                peaks[name].append(peak)
    engine = seconds["engine one at a time"]
    result: dict = {"images": count, "shape": list(shape), "repeats": repeats}
    for name, values in seconds.items():
        result[name] = {
            "seconds": [round(v, 2) for v in values],
            "images/s": [round(count / v, 3) for v in values],
        }
        if name in folder_runs:
            # Each folder run against the engine pass next to it in time.
            result[name]["ratio to the engine"] = [
                round(e / v, 2) for e, v in zip(engine, values, strict=True)
            ]
            result[name]["peak MiB"] = [round(v) for v in peaks[name]]
    return result


def _write_images(folder: Path, count: int, shape: tuple[int, int]) -> list[Path]:
    from PIL import Image

    from unet.training.synthetic import nuclei_image

    folder.mkdir(parents=True)
    paths = []
    for seed in range(count):
        image, _ = nuclei_image(shape, seed=seed)
        path = folder / f"cells-{seed:03d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def _medians(values: list[tuple[float, float]]) -> list[float]:
    import statistics

    return [round(statistics.median(v[i] for v in values), 2) for i in range(2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["overhead", "folder"])
    parser.add_argument("--side", default="1024", help="N or HxW")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--api-url", help="also a tracked folder run on this Prefect server")
    arguments = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="unet-local-run-"))
    try:
        if arguments.what == "overhead":
            result = overhead(int(arguments.side), arguments.repeats, work)
        else:
            height, _, width = arguments.side.partition("x")
            shape = (int(height), int(width or height))
            result = folder(arguments.images, shape, arguments.repeats, work, arguments.api_url)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
