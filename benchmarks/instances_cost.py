"""What ``--instances`` adds to a run: the instance pass's time and peak memory against the
segmentation's alone (issue 21).

Segments a generated nuclei image (:func:`unet.bench.inputs.bench_image`, 1024^2 chunks) with
the bundled model through the default cluster, then runs the instance pass on the finished mask
(:func:`unet.engine.instances.stage.label_instances`: both rounds of chunk tasks, the instance
image with its pyramid and the object table) on a cluster made the same way, in the same process,
as ``unet segment --instances`` does. Prints wall time and the peak RSS of this process and its
children during each, and the RSS before the pass.

``--truth`` skips the model: the mask is the scene's own nucleus mask (what a perfect model would
give, written chunk by chunk), so the pass alone can be measured on large images in minutes.

    .venv/bin/python benchmarks/instances_cost.py --side 16384 --work /tmp/benchwork
    .venv/bin/python benchmarks/instances_cost.py --side 16384 --truth --work /tmp/benchwork
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))
from memory import PeakRSS  # noqa: E402

MIB = 2**20


def truth_mask(work: Path, side: int, chunk: int) -> tuple[str, list[str]]:
    """The nucleus mask of the benchmark's nuclei scene, written once per work folder."""
    from unet.io.omezarr import create_label_image
    from unet.training.synthetic import NucleiScene

    path = work / f"nuclei-truth-{side}-c{chunk}.zarr"
    names = list(NucleiScene.class_names)
    if not (path / ".complete").exists():
        colours = [(0, 0, 0), (255, 255, 0)]
        level0 = create_label_image(
            path, (side, side), (chunk, chunk), class_names=names, colours=colours, overwrite=True
        )
        scene = NucleiScene(shape=(side, side), seed=0)
        for y in range(0, side, chunk):
            for x in range(0, side, chunk):
                rows, cols = slice(y, min(y + chunk, side)), slice(x, min(x + chunk, side))
                _, nuclei = scene.render(rows, cols)
                level0[rows, cols] = (nuclei > 0).astype("uint8")
        (path / ".complete").write_text("")
    return str(path), names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=16384)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--truth", action="store_true", help="the scene's own mask, no model")
    parser.add_argument("--work", type=Path, default=None, help="keeps the generated inputs")
    args = parser.parse_args()

    from unet.bench.inputs import bench_checkpoint, bench_image
    from unet.config import SegmentParameters
    from unet.engine.cluster import dask_client, plan_cluster
    from unet.engine.instances import instances_location, objects_location
    from unet.engine.instances.stage import label_instances
    from unet.engine.run import segment
    from unet.network.checkpoint import load_checkpoint

    work = args.work or Path(tempfile.mkdtemp(prefix="instances-cost-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, object] = {"side": args.side, "chunk": args.chunk}
    started = time.perf_counter()
    if args.truth:
        mask, names = truth_mask(work, args.side, args.chunk)
        result["mask"] = "scene truth"
    else:
        image = bench_image(work, args.side, args.chunk, 1)
        model = bench_checkpoint(work, args.model)
        mask = str(work / f"mask-{args.side}.zarr")
        names = list(load_checkpoint(model).class_names)
        result.update(model=args.model, device=args.device, precision=args.precision)
    print(f"inputs ready in {time.perf_counter() - started:.0f} s", flush=True)

    if not args.truth:
        parameters = SegmentParameters(
            model=model, device=args.device, precision=args.precision, overwrite=True
        )
        started = time.perf_counter()
        with PeakRSS() as peak:
            report = segment(str(image), mask, parameters)
        result.update(
            segmentation_s=round(time.perf_counter() - started, 1),
            segmentation_mpx_per_s=round(report.megapixels_per_second, 3),
            segmentation_peak_rss_mib=round(peak.peak / MIB),
        )

    before = psutil.Process().memory_info().rss
    started = time.perf_counter()
    with PeakRSS() as peak, dask_client(plan_cluster(args.device, None, None)) as client:
        summary = label_instances(
            client, mask, instances_location(mask), objects_location(mask), class_names=names
        )
    seconds = time.perf_counter() - started
    result.update(
        instance_pass_s=round(seconds, 1),
        rss_before_pass_mib=round(before / MIB),
        instance_pass_peak_rss_mib=round(peak.peak / MIB),
        objects=summary.objects,
        objects_spanning_chunks=summary.spanning,
        instance_dtype=str(summary.dtype),
    )
    if "segmentation_s" in result:
        result["extra_time"] = round(seconds / float(result["segmentation_s"]), 3)
    print(json.dumps(result, indent=2))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
