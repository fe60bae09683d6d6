"""Pipeline throughput and peak memory against image size (issue: out-of-core pipeline).

Writes a smooth random uint8 image of each side into Zarr (1024x1024 chunks), segments it with a
small random model through the full pipeline (Zarr in, Dask LocalCluster, OME-Zarr out) and
prints Mpx/s and the peak RSS of the driver plus its Dask worker processes. The target: peak RSS
at 16384^2 at most 1.3x the peak at 4096^2.

    .venv/bin/python benchmarks/pipeline_scaling.py --sides 4096 16384
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from memory import PeakRSS  # noqa: E402


def write_image(path: Path, side: int, chunk: int = 1024) -> None:
    import zarr

    array = zarr.create_array(str(path), shape=(side, side), chunks=(chunk, chunk), dtype="uint8")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:chunk, 0:chunk].astype(np.float32)
    for y in range(0, side, chunk):
        for x in range(0, side, chunk):
            blobs = 128 + 60 * np.sin((yy + y) / 37.0) * np.cos((xx + x) / 23.0)
            noise = rng.normal(0, 10, (chunk, chunk))
            array[y : y + chunk, x : x + chunk] = np.clip(blobs + noise, 0, 255).astype(np.uint8)


def small_checkpoint(path: Path, base_channels: int, depth: int) -> str:
    import torch

    from unet.network.checkpoint import save_checkpoint
    from unet.network.model import UNet

    torch.manual_seed(0)
    return str(
        save_checkpoint(path, UNet(base_channels=base_channels, depth=depth), mean=128, std=40)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--base-channels", type=int, default=4)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--tile-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()

    from unet.config import SegmentParameters
    from unet.engine.run import segment

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = small_checkpoint(tmp / "model.safetensors", args.base_channels, args.depth)
        for side in args.sides:
            image = tmp / f"image-{side}.zarr"
            write_image(image, side)
            params = SegmentParameters(
                model=model, tile_size=args.tile_size, batch_size=args.batch_size, device="cpu"
            )
            started = time.perf_counter()
            with PeakRSS() as peak:
                report = segment(str(image), str(tmp / f"mask-{side}.zarr"), params)
            wall = time.perf_counter() - started
            rows.append((side, report.megapixels, wall, report.megapixels_per_second, peak.peak))
            print(
                f"{side}^2: {report.megapixels:.1f} Mpx in {wall:.1f} s, "
                f"{report.megapixels_per_second:.2f} Mpx/s, peak RSS {peak.peak / 2**20:.0f} MiB",
                flush=True,
            )
    if len(rows) >= 2:
        ratio = rows[-1][4] / rows[0][4]
        verdict = "meets" if ratio <= 1.3 else "misses"
        print(f"peak RSS {rows[-1][0]}^2 / {rows[0][0]}^2 = {ratio:.2f} ({verdict} the 1.3 target)")


if __name__ == "__main__":
    main()
