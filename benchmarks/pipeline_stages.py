"""Where a real pipeline run's time goes: the stages of each chunk, timed inside the run.

Runs :func:`unet.engine.segment` through the default CPU cluster (one in-process Dask worker),
with the worker's stages wrapped in timers, and prints per chunk: the run's wall time, the task
(``run_chunk``), the forward pass, reading, writing, the ledger and normalizing. The share of the
wall time spent in forward passes is the pipeline's efficiency against its own model, free of
the machine's drift between separate measurements (``unet bench`` compares with the raw model
measured minutes apart).

    .venv/bin/python benchmarks/pipeline_stages.py /tmp/benchwork/nuclei-8192-c1024-ch1.zarr \
        --warmup /tmp/benchwork/nuclei-1024-c1024-ch1.zarr --runs 2
"""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("--warmup", required=True, help="a one-chunk image run first")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--model", default="nuclei")
    args = parser.parse_args()

    import unet.engine.worker as worker
    import unet.predict as predict
    from unet.config import SegmentParameters
    from unet.engine.cluster import dask_client, plan_cluster
    from unet.engine.run import segment
    from unet.network.checkpoint import Checkpoint

    seconds: dict[str, float] = defaultdict(float)
    calls: Counter[str] = Counter()

    def timed(owner, name: str) -> None:
        function = getattr(owner, name)

        @functools.wraps(function)
        def wrapper(*a, **k):
            begin = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                seconds[name] += time.perf_counter() - begin
                calls[name] += 1

        setattr(owner, name, wrapper)

    # The in-process worker runs these very module attributes.
    for name in ("run_chunk", "read_window", "write_chunk_levels", "mark_finished"):
        timed(worker, name)
    timed(predict, "forward")
    timed(Checkpoint, "normalize")

    parameters = SegmentParameters(
        model=args.model, device="cpu", precision="auto", batch_size=1, overwrite=True
    )
    work = Path(tempfile.mkdtemp(prefix="unet-stages-"))
    try:
        with dask_client(plan_cluster("cpu", None, None)) as client:
            segment(args.warmup, str(work / "warmup.zarr"), parameters, client=client)
            for _ in range(args.runs):
                seconds.clear()
                calls.clear()
                shutil.rmtree(work / "mask.zarr", ignore_errors=True)
                report = segment(args.image, str(work / "mask.zarr"), parameters, client=client)
                chunks = report.chunks_computed
                stages = "  ".join(
                    f"{name} {total / calls[name] * 1e3:.1f}"
                    for name, total in sorted(seconds.items(), key=lambda item: -item[1])
                )
                print(
                    f"{report.megapixels_per_second:.3f} Mpx/s, {report.seconds / chunks * 1e3:.1f}"
                    f" ms a chunk; forward passes {seconds['forward'] / report.seconds:.3f} of the"
                    f" wall time; ms a call: {stages}",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
