"""Two tile sizes through the whole pipeline, alternated in one process.

A shared machine's speed drifts by 15% over minutes, so runs of one setting after the other
compare the machine as much as the settings. Here both tile sizes share one in-process Dask
cluster and take turns on the same image; the medians are comparable. (Peak memory is not: the
process keeps the larger setting's heap. ``unet bench --tile-size`` measures that in a fresh
process.)

    .venv/bin/python benchmarks/tile_ab.py /tmp/benchwork/nuclei-4096-c1024-ch1.zarr
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", help="a Zarr image, e.g. one unet bench --workdir generated")
    parser.add_argument("--tiles", type=int, nargs=2, default=[604, 1116])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()

    from unet.engine.allocator import reuse_freed_memory

    reuse_freed_memory()
    from unet.config import SegmentParameters
    from unet.engine.cluster import dask_client, plan_cluster
    from unet.engine.run import segment
    from unet.network.checkpoint import resolve_checkpoint

    work = Path(tempfile.mkdtemp(prefix="unet-tile-ab-"))
    model = str(resolve_checkpoint(args.model))
    speeds: dict[int, list[float]] = {tile: [] for tile in args.tiles}
    with dask_client(plan_cluster("cpu", None, None)) as client:
        for round_ in range(args.rounds + 1):
            for tile in args.tiles:
                parameters = SegmentParameters(
                    model=model,
                    tile_size=tile,
                    batch_size=1,
                    device="cpu",
                    precision=args.precision,
                    overwrite=True,
                )
                report = segment(args.image, str(work / f"{tile}.zarr"), parameters, client=client)
                if round_:  # the first round warms the worker up
                    speeds[tile].append(report.megapixels_per_second)
    for tile, values in speeds.items():
        listed = ", ".join(f"{value:.3f}" for value in values)
        print(f"tile {tile}: {listed} Mpx/s, median {statistics.median(values):.3f}")


if __name__ == "__main__":
    main()
