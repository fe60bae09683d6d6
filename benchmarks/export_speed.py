"""How fast ``unet export`` polygonizes: polygons a second and seconds for a mask of a side.

The mask is a generated satellite scene's ground truth (``SatelliteScene``, seed 1, classes
field, road, building, water: what a good model writes), 4096 x 4096 rendered once and laid
``side / 4096`` times along each axis into a georeferenced mask of ``side`` x ``side`` in
1024 x 1024 chunks, 10 m pixels. The road network crosses every chunk, so its regions are the
hardest case of merging across chunk borders. Then ``export(MASK, OUT.gpkg)`` with the default
``--min-area`` runs in this process, timed, with its peak memory (RSS high-water mark).

    nice .venv/bin/python benchmarks/export_speed.py --side 16384 --work /tmp/export-speed
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TILE = 4096


def write_mask(url: Path, side: int) -> None:
    from rasterio.crs import CRS

    from unet.io.geo import Georeference, write_georeference
    from unet.io.omezarr import create_label_image
    from unet.training.synthetic import SatelliteScene, render

    scene = SatelliteScene(shape=(TILE, TILE), seed=1)
    labels = np.concatenate(
        [
            np.concatenate(
                [
                    render(scene, slice(r, r + 1024), slice(c, c + 1024))[1]
                    for c in range(0, TILE, 1024)
                ],
                axis=1,
            )
            for r in range(0, TILE, 1024)
        ]
    ).astype(np.uint8)
    level0 = create_label_image(
        url,
        (side, side),
        (1024, 1024),
        class_names=list(SatelliteScene.class_names),
        colours=[(0, 0, 0), (60, 180, 75), (128, 128, 128), (230, 25, 75), (0, 130, 200)],
    )
    for row in range(0, side, TILE):
        for col in range(0, side, TILE):
            level0[row : row + TILE, col : col + TILE] = labels
    transform = (10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0)
    write_georeference(url, Georeference(CRS.from_epsg(32633).to_wkt(), transform))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=4096, help="a multiple of 4096")
    parser.add_argument("--work", type=Path, required=True, help="folder for the mask and output")
    args = parser.parse_args()
    from unet.results.export import export

    args.work.mkdir(parents=True, exist_ok=True)
    mask = args.work / f"mask-{args.side}.zarr"
    if not mask.exists():
        write_mask(mask, args.side)
    output = args.work / f"polygons-{args.side}.gpkg"
    started = time.perf_counter()
    result = export(mask, output, overwrite=True)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures = {
        "side": args.side,
        "seconds": round(seconds, 1),
        "polygons": result.polygons,
        "specks_left_out": result.dropped,
        "polygons_per_second": round(result.polygons / seconds),
        "megapixels_per_second": round(args.side**2 / seconds / 1e6, 2),
        "peak_rss_mib": round(peak),
        "file_mib": round(output.stat().st_size / 2**20, 1),
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
