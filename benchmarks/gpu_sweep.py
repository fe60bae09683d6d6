"""GPU settings sweep beside ``unet bench``: raw batch sizes and chunks in flight per GPU worker.

Each point runs in a fresh subprocess as ``unet bench`` measures (see :mod:`unet.bench`).

    python benchmarks/gpu_sweep.py --workdir /tmp/w --side 16384 --json sweep.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from bench import measure_in_subprocess

from unet.bench.inputs import BENCH_CHUNK, bench_checkpoint, bench_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--side", type=int, default=16384)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 8])
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--base-channels", type=int, help="default the paper's 64")
    parser.add_argument("--json")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = bench_checkpoint(work, base_channels=args.base_channels, paper=True)
    from unet.network.checkpoint import load_checkpoint
    from unet.tiling import default_tile_size

    geometry = load_checkpoint(checkpoint).model.geometry
    tile = default_tile_size(geometry, BENCH_CHUNK)
    common = {
        "device": args.device,
        "precision": args.precision,
        "checkpoint": checkpoint,
        "channels_last": True,
        "in_process": False,
    }
    rows = []
    for batch in args.batches:
        result = measure_in_subprocess(
            {**common, "kind": "raw", "tile_size": tile, "batch_size": batch, "repeats": 5}
        )
        rows.append({"what": f"raw tile {tile} batch {batch}", **result})
        print(rows[-1]["what"], result["mpx_per_s"], "Mpx/s", flush=True)
    image = bench_image(work, args.side, BENCH_CHUNK, 1)
    warmup = bench_image(work, BENCH_CHUNK, BENCH_CHUNK, 1)
    for threads in args.threads:
        os.environ["UNET_GPU_THREADS"] = str(threads)
        result = measure_in_subprocess(
            {
                **common,
                "kind": "pipeline",
                "tile_size": tile,
                "batch_size": 1,
                "image": str(image),
                "warmup": str(warmup),
                "output": str(work / f"sweep-{threads}.zarr"),
                "side": args.side,
            }
        )
        rows.append({"what": f"pipeline {args.side}^2, {threads} chunks in flight", **result})
        print(rows[-1]["what"], result["mpx_per_s"], "Mpx/s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
