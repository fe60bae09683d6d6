"""CPU time Dask itself spends per chunk task, measured with tasks that do nothing.

The engine's loop of one-item tasks (``unet.engine.run.run_chunks``: a bounded number of tasks
in flight, results as they complete) runs 1000 no-op tasks on the default CPU cluster (one worker of
threads in this process); the process's CPU time per task is what each real chunk task takes
from the cores its forward pass runs on.

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
    from unet.engine import run as engine
    from unet.engine.cluster import dask_client, plan_cluster

    pending = [(i, j) for i in range(20) for j in range(50)]
    with dask_client(plan_cluster("cpu", None, None)) as client:
        list(engine.run_chunks(client, ["warm-up"], pending[:20], task=nothing))
        cpu, wall = time.process_time(), time.perf_counter()
        count = sum(1 for _ in engine.run_chunks(client, ["timed"], pending, task=nothing))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(
        f"{count} no-op tasks: {1000 * cpu / count:.2f} ms CPU, {1000 * wall / count:.2f} ms wall per task"
    )


if __name__ == "__main__":
    main()
