"""What ``unet segment`` costs beyond the engine, and how fast a folder of small images goes.

Two measurements, each against its own baseline in the same run (the machine's load changes
between runs, so figures of different runs are not compared):

``overhead``: ``unet segment IMAGE OUT --device cpu`` without a Prefect server against the same
engine call in Python (``unet.engine.run.segment`` with its own cluster), each a fresh process:
wall seconds and the peak resident memory of the process tree, alternating, ``--repeats`` times.

``folder``: ``--images`` generated images of ``--side`` pixels (PNG, as a lab's folder holds
them). The baseline is the engine one image at a time on their ingested copies, with one client
for all (each image's ``report.seconds``, summed, and the wall time of the loop); then the folder
run through the public API on a client of the same plan (``unet.segment(folder, masks)``,
ingest and previews included), and the folder run as a user starts it (``unet segment FOLDER
MASKS``: process start, cluster start and all). With ``--api-url`` a tracked ``unet segment`` of
the folder too.

    python benchmarks/local_run.py overhead --side 1024 --repeats 3
    python benchmarks/local_run.py folder --images 60 --side 384x512
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


def folder(count: int, shape: tuple[int, int], work: Path, api_url: str | None) -> dict:
    import unet
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
    result: dict = {"images": count, "shape": list(shape)}
    with dask_client(plan) as client:
        segment(
            str(ingested / f"{images[0].stem}.zarr"),
            str(work / "warm.zarr"),
            parameters,
            client=client,
        )  # the worker's model loaded, as for the folder run below
        started = time.perf_counter()
        reports = [
            segment(
                str(ingested / f"{p.stem}.zarr"),
                str(work / "engine" / f"{p.stem}.zarr"),
                parameters,
                client=client,
            )
            for p in images
        ]
        engine_wall = time.perf_counter() - started
        engine_sum = sum(r.seconds for r in reports)
        started = time.perf_counter()
        unet.segment(str(work / "images"), str(work / "api"), client=client, device="cpu")
        api_wall = time.perf_counter() - started
    result["engine one at a time"] = {
        "seconds": round(engine_wall, 2),
        "sum of report.seconds": round(engine_sum, 2),
        "images/s": round(count / engine_wall, 2),
    }
    result["unet.segment(folder), same client"] = {
        "seconds": round(api_wall, 2),
        "images/s": round(count / api_wall, 2),
        "ratio": round(engine_wall / api_wall, 2),
    }
    env = untracked_environment(work / "prefect-home")
    seconds, peak = tree_peak(
        [UNET, "segment", str(work / "images"), str(work / "cli"), "--device", "cpu"], env
    )
    result["unet segment FOLDER (untracked)"] = {
        "seconds": round(seconds, 2),
        "images/s": round(count / seconds, 2),
        "ratio": round(engine_wall / seconds, 2),
        "peak MiB": round(peak),
    }
    if api_url:
        seconds, peak = tree_peak(
            [UNET, "segment", str(work / "images"), str(work / "tracked"), "--device", "cpu"],
            {**env, "PREFECT_API_URL": api_url},
        )
        result["unet segment FOLDER (tracked)"] = {
            "seconds": round(seconds, 2),
            "images/s": round(count / seconds, 2),
            "ratio": round(engine_wall / seconds, 2),
            "peak MiB": round(peak),
        }
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
            result = folder(arguments.images, shape, work, arguments.api_url)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
