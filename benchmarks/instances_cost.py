"""What ``--instances`` adds to a run: the instance pass's time and peak memory against the
segmentation's alone (issue 21).

Segments a generated nuclei image (:func:`unet.bench.inputs.bench_image`, 1024^2 chunks) with
the bundled model through the default cluster, then runs the instance pass alone on the finished
mask (:func:`unet.engine.instances.stage.label_instances`, both rounds of chunk tasks, the
instance image with its pyramid and the object table) on a cluster made the same way, and prints
wall time and the peak RSS of this process and its children for each, with the objects found.

    .venv/bin/python benchmarks/instances_cost.py --side 16384 --work /tmp/benchwork
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from memory import PeakRSS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=16384)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--work", type=Path, default=None, help="keeps the generated image")
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
    started = time.perf_counter()
    image = bench_image(work, args.side, args.chunk, 1)
    model = bench_checkpoint(work, args.model)
    print(f"input {image} ready in {time.perf_counter() - started:.0f} s", flush=True)
    mask = str(work / f"mask-{args.side}.zarr")
    parameters = SegmentParameters(
        model=model, device=args.device, precision=args.precision, overwrite=True
    )

    started = time.perf_counter()
    with PeakRSS() as segmentation_peak:
        report = segment(str(image), mask, parameters)
    segmentation_seconds = time.perf_counter() - started

    names = list(load_checkpoint(model).class_names)
    cluster = plan_cluster(args.device, None, None)
    started = time.perf_counter()
    with PeakRSS() as pass_peak, dask_client(cluster) as client:
        summary = label_instances(
            client, mask, instances_location(mask), objects_location(mask), class_names=names
        )
    pass_seconds = time.perf_counter() - started

    result = {
        "side": args.side,
        "chunk": args.chunk,
        "model": args.model,
        "device": args.device,
        "segmentation_s": round(segmentation_seconds, 1),
        "segmentation_mpx_per_s": round(report.megapixels_per_second, 3),
        "segmentation_peak_rss_mib": round(segmentation_peak.peak / 2**20),
        "instance_pass_s": round(pass_seconds, 1),
        "instance_pass_peak_rss_mib": round(pass_peak.peak / 2**20),
        "extra_time": round(pass_seconds / segmentation_seconds, 3),
        "objects": summary.objects,
        "objects_spanning_chunks": summary.spanning,
        "instance_dtype": str(summary.dtype),
    }
    print(json.dumps(result, indent=2))
    print(
        f"{args.side}^2: segmentation {segmentation_seconds:.0f} s "
        f"(peak RSS {result['segmentation_peak_rss_mib']} MiB); instance pass "
        f"{pass_seconds:.1f} s = {100 * result['extra_time']:.1f}% more "
        f"(peak RSS {result['instance_pass_peak_rss_mib']} MiB); "
        f"{summary.objects} objects, {summary.spanning} across chunk borders"
    )
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
