"""Where one chunk's time goes: each stage of :func:`unet.engine.worker.run_chunk`, timed in one thread.

Then the input reads alone with 1, 4 and 8 threads, to see whether reading scales with threads
(Zarr's sync API funnels every thread's I/O through one event loop).

    python benchmarks/chunk_profile.py IMAGE.zarr --device cuda --paper --chunks 32
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--paper", action="store_true", help="random base-64 depth-4 model")
    parser.add_argument("--chunks", type=int, default=16)
    args = parser.parse_args()

    from unet.engine.allocator import reuse_freed_memory

    reuse_freed_memory()
    import unet.engine.worker as worker
    import unet.predict
    from unet.bench.inputs import bench_checkpoint
    from unet.config import SegmentParameters
    from unet.engine.output import open_output
    from unet.engine.plan import plan_run
    from unet.tiling import default_tile_size

    work = Path(tempfile.mkdtemp(prefix="unet-profile-"))
    model = bench_checkpoint(work, paper=args.paper)
    parameters = SegmentParameters(
        model=model, device=args.device, precision=args.precision, overwrite=True
    )
    output = str(work / "mask.zarr")
    started = time.perf_counter()
    plan = plan_run(args.image, output, parameters)
    planned = time.perf_counter() - started
    group = open_output(plan)
    opened = time.perf_counter() - started - planned
    tile = default_tile_size(plan.checkpoint.model.geometry, plan.chunks[0])
    job = worker.ChunkJob(
        source=plan.source,
        output=output,
        checkpoint=plan.checkpoint.path,
        checkpoint_digest=plan.checkpoint.digest,
        chunks=plan.chunks,
        tile_size=tile,
        batch_size=1,
        device=args.device,
        precision=parameters.precision,
        probabilities=False,
        nodata=None,
        torch_threads=None,
        pyramid_levels=group.attrs["unet"].get("chunk_levels", 0),
    )
    times: dict[str, float] = defaultdict(float)

    def timed(name, function):
        def wrapper(*a, **k):
            begin = time.perf_counter()
            result = function(*a, **k)
            times[name] += time.perf_counter() - begin
            return result

        return wrapper

    read_window = worker.read_window
    worker.read_window = timed("read window", worker.read_window)
    unet.predict.device_step = timed(
        "device step (copy in, forward, labels, copy out)", unet.predict.device_step
    )
    # The mask and its pyramid levels go to Zarr in one call (unet.io.pyramid.write_chunk_levels).
    worker.write_chunk_levels = timed("write mask and levels", worker.write_chunk_levels)
    worker.mark_finished = timed("ledger", worker.mark_finished)
    indices = plan.grid.indices()
    worker.run_chunk(job, indices[len(indices) // 2])  # warm-up: model load, cuDNN autotune
    times.clear()
    chosen = indices[: args.chunks]
    begin = time.perf_counter()
    for index in chosen:
        worker.run_chunk(job, index)
    total = time.perf_counter() - begin
    n = len(chosen)
    print(f"plan_run {planned:.3f} s, open output {opened:.3f} s, tile {tile}")
    print(f"per chunk {1000 * total / n:.1f} ms over {n} chunks ({args.device}, one thread)")
    for name, seconds in sorted(times.items(), key=lambda item: -item[1]):
        print(f"  {name:<45}{1000 * seconds / n:8.1f} ms")
    geometry = plan.checkpoint.model.geometry
    for threads in (1, 4, 8):
        begin = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda i: read_window(job.source, job.window(i, geometry)), chosen))
        seconds = time.perf_counter() - begin
        print(f"reads alone, {threads} threads: {1000 * seconds / n:.1f} ms per chunk")


if __name__ == "__main__":
    main()
