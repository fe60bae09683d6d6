"""A worker's CPU per chunk when the device costs nothing: the host side of a GPU chunk.

The chunks of a generated image go through :func:`unet.engine.task.run_chunk_task` in this
process, in tasks of ``--task`` chunks in strip order, as a worker runs them (streamed, or one
after the other with ``--sequential``), with :func:`unet.predict.device_step` replaced by a
device that costs nothing (:class:`unet.bench.simulate.SimulatedDevice` at ``inf``). No Dask:
what is left is the worker's own work (read, decode, mirror, tiles, paste, encode, write,
pyramid levels, ledger). Prints the process's CPU milliseconds per chunk (every thread, Rust's
codec threads too) and the wall milliseconds per chunk.

    .venv/bin/python benchmarks/host_cost.py --side 8192 --rounds 3 --workdir /tmp/benchwork
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=8192)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--task", type=int, default=32, help="chunks per task")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sequential", action="store_true", help="one chunk after the other")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/benchwork"))
    arguments = parser.parse_args()

    import math

    import numpy as np

    import unet.predict
    from unet.bench.inputs import bench_checkpoint, bench_image
    from unet.bench.simulate import SimulatedDevice
    from unet.config import SegmentParameters
    from unet.engine.allocator import reuse_freed_memory
    from unet.engine.output import open_output
    from unet.engine.plan import plan_run
    from unet.engine.run import chunk_job
    from unet.engine.task import run_chunk_task
    from unet.io.codecs import use_fast_codecs
    from unet.tiling import strip_order_array

    reuse_freed_memory()
    use_fast_codecs()
    work = arguments.workdir
    work.mkdir(parents=True, exist_ok=True)
    image = bench_image(work, arguments.side, arguments.chunk, 1)
    model = bench_checkpoint(work)
    unet.predict.device_step = SimulatedDevice(math.inf)
    rounds = []
    for _ in range(arguments.rounds):
        output = work / "host-cost.zarr"
        shutil.rmtree(output, ignore_errors=True)
        parameters = SegmentParameters(model=model, device="cpu", precision="fp32")
        plan = plan_run(str(image), str(output), parameters)
        group = open_output(plan)
        job = chunk_job(plan, group, torch_threads=1)
        job = type(job)(**{**job.__dict__, "stream": not arguments.sequential})
        order = strip_order_array(np.ones(plan.grid.counts, bool))

        def tasks(job=job, order=order) -> None:
            for start in range(0, len(order), arguments.task):
                run_chunk_task(job, order[start : start + arguments.task])

        # In a thread of its own, as a Dask worker runs a task (Blosc, for one, starts threads
        # of its own only when called from the main thread).
        cpu, wall = time.process_time(), time.perf_counter()
        runner = threading.Thread(target=tasks)
        runner.start()
        runner.join()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        rounds.append(
            {
                "cpu_ms_per_chunk": 1000 * cpu / len(order),
                "wall_ms_per_chunk": 1000 * wall / len(order),
            }
        )
    print(
        json.dumps(
            {
                "side": arguments.side,
                "chunk": arguments.chunk,
                "streamed": not arguments.sequential,
                "task": arguments.task,
                "cpu_ms_per_chunk": round(
                    statistics.median(r["cpu_ms_per_chunk"] for r in rounds), 2
                ),
                "wall_ms_per_chunk": round(
                    statistics.median(r["wall_ms_per_chunk"] for r in rounds), 2
                ),
                "rounds": rounds,
            }
        )
    )


if __name__ == "__main__":
    main()
