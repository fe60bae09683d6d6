"""CPU time Dask itself spends per item of the instance pass, measured with items that cost
nothing.

The engine's loop of item tasks (``unet.engine.dispatch.run_items``: several items a task, sized by
measurement, results as they complete) runs 1000 no-op items on the default CPU cluster (one
worker of threads in this process); the process's CPU time per item is what each real chunk's
item takes from the cores its labelling runs on. It was 3.9-4.4 ms with one task per item, and
0.1 ms with tasks of several (2 CPU cores).

    .venv/bin/python benchmarks/dask_task_cost.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def nothing(job: object, index: tuple[int, int]) -> tuple[int, int]:
    return index


def main() -> None:
    from unet.engine.cluster import dask_client, plan_cluster
    from unet.engine.dispatch import run_items

    pending = [(i, j) for i in range(20) for j in range(50)]
    with dask_client(plan_cluster("cpu", None, None)) as client:
        list(run_items(client, ["warm-up"], pending[:20], nothing))
        cpu, wall = time.process_time(), time.perf_counter()
        count = sum(1 for _ in run_items(client, ["timed"], pending, nothing))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(
        f"{count} no-op items: {1000 * cpu / count:.2f} ms CPU, {1000 * wall / count:.2f} ms wall per item"
    )


if __name__ == "__main__":
    main()
