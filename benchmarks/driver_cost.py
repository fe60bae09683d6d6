"""The driver's CPU per chunk on an external cluster (issue 26's measurement).

A ``dask scheduler`` and one ``dask worker`` are started by hand, as the README shows, the
worker with ``--preload benchmarks/instant_device.py`` (a device step that costs nothing).
``unet segment IMAGE MASK --scheduler ADDRESS --device cpu`` then runs on the same 8192² image
stored with two chunkings (256² and 512²: 1,024 and 256 chunks), each in a fresh process. The
driver's CPU per chunk is the difference of the two runs' CPU times (user + system of the
``unet`` process) over the difference of their chunk counts, so that start-up, imports and
everything else that does not grow with the chunks cancel out. The scheduler's and the worker's
CPU times are measured the same way (their processes' times before and after each run).

    .venv/bin/python benchmarks/driver_cost.py --rounds 3 --workdir /tmp/driver-cost

Prints one JSON object: per chunking the medians of the runs, and
``driver_cpu_ms_per_chunk`` / ``scheduler_cpu_ms_per_chunk`` / ``worker_cpu_ms_per_chunk``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
#: What the local cluster sets for its own workers (README, "Dask").
WORKER_ENVIRONMENT = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_TRIM_THRESHOLD_": "1099511627776",
    "ZARR_CODEC_PIPELINE__PATH": "zarrs.ZarrsCodecPipeline",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=8192)
    parser.add_argument("--chunks", default="256,512", help="two chunk sides, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/driver-cost"))
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--workers", type=int, default=1, help="dask worker processes")
    parser.add_argument("--extra", default="", help="more options for unet segment")
    arguments = parser.parse_args()
    sides = [int(side) for side in arguments.chunks.split(",")]
    work = arguments.workdir
    work.mkdir(parents=True, exist_ok=True)
    images = {side: make_image(work, arguments.side, side) for side in sides}
    results = {}
    with cluster(work, arguments.workers) as (address, processes):
        run(images[sides[-1]], work / "warm.zarr", address, arguments)  # workers load the model
        for side in sides:
            rounds = [
                measure(images[side], work / f"mask-{side}.zarr", address, processes, arguments)
                for _ in range(arguments.rounds)
            ]
            results[side] = {
                key: statistics.median(r[key] for r in rounds) for key in rounds[0]
            } | {"rounds": rounds}
    small, large = sides
    chunks = {side: results[side]["chunks"] for side in sides}
    summary: dict[str, object] = {"side": arguments.side, "runs": results}
    for part in ("driver", "scheduler", "worker"):
        difference = results[small][f"{part}_cpu_s"] - results[large][f"{part}_cpu_s"]
        summary[f"{part}_cpu_ms_per_chunk"] = round(
            1000 * difference / (chunks[small] - chunks[large]), 3
        )
    print(json.dumps(summary, indent=1))


def make_image(work: Path, side: int, chunk: int) -> Path:
    from unet.bench.inputs import bench_image

    return bench_image(work, side, chunk, channels=1)


class cluster:
    """``dask scheduler`` and ``dask worker`` processes on 127.0.0.1, as the README starts them."""

    def __init__(self, work: Path, workers: int) -> None:
        self.work, self.workers = work, workers

    def __enter__(self):
        port = free_port()
        address = f"tcp://127.0.0.1:{port}"
        environment = {**os.environ, **WORKER_ENVIRONMENT, "PYTHONPATH": str(ROOT)}
        log = open(self.work / "cluster.log", "w")  # noqa: SIM115
        self.processes = [
            subprocess.Popen(
                [
                    str(BIN / "dask"),
                    "scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--dashboard-address",
                    "127.0.0.1:0",
                ],
                stdout=log,
                stderr=log,
                env=environment,
                start_new_session=True,
            )
        ]
        wait_for_port(port)
        for _ in range(self.workers):
            self.processes.append(
                subprocess.Popen(
                    [
                        str(BIN / "dask"),
                        "worker",
                        address,
                        "--nthreads",
                        "1",
                        "--host",
                        "127.0.0.1",
                        "--preload",
                        str(ROOT / "benchmarks/instant_device.py"),
                    ],
                    stdout=log,
                    stderr=log,
                    env=environment,
                    start_new_session=True,
                )
            )
        time.sleep(5)
        return address, self.processes

    def __exit__(self, *exc: object) -> None:
        import signal

        for process in self.processes:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for process in self.processes:
            process.wait(timeout=30)


def cpu_seconds(processes: list[subprocess.Popen]) -> list[float]:
    """CPU seconds (user + system) of each process and its children so far."""
    import psutil

    times = []
    for process in processes:
        try:
            parent = psutil.Process(process.pid)
            family = [parent, *parent.children(recursive=True)]
            times.append(sum(p.cpu_times().user + p.cpu_times().system for p in family))
        except psutil.NoSuchProcess:
            times.append(0.0)
    return times


def run(image: Path, mask: Path, address: str, arguments) -> dict:
    shutil.rmtree(mask, ignore_errors=True)
    report = mask.with_suffix(".json")
    command = [
        str(BIN / "unet"),
        "segment",
        str(image),
        str(mask),
        "--scheduler",
        address,
        "--device",
        "cpu",
        "--model",
        arguments.model,
        "--report",
        str(report),
        *arguments.extra.split(),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    data = json.loads(report.read_text())
    return {
        "chunks": data["chunks_total"],
        "wall_s": wall,
        "seconds": data["seconds"],
        "driver_cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "driver_peak_rss_mib": after.ru_maxrss / 1024,
    }


def measure(image: Path, mask: Path, address: str, processes, arguments) -> dict:
    before = cpu_seconds(processes)
    result = run(image, mask, address, arguments)
    after = cpu_seconds(processes)
    result["scheduler_cpu_s"] = after[0] - before[0]
    result["worker_cpu_s"] = sum(after[1:]) - sum(before[1:])
    return result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


if __name__ == "__main__":
    main()
