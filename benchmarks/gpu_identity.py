"""On a GPU: the streamed GPU worker gives the same bits as the simple path.

1. Raw uint8 and uint16 tiles normalized on the device (:func:`unet.predict.step.normalized`)
   equal numpy's float32 ``(raw - mean) / std`` bit for bit;
2. :func:`unet.predict.predict_window` on a raw window (normalized on the device) gives the same
   logits and labels as on a window normalized on the host, in fp32 and bf16;
3. a run through the GPU plan (:func:`unet.engine.cluster.gpu_plan`: chunks streamed, several per
   task) writes the same mask as a run of one chunk per task.

Prints one JSON line (and writes it with ``--json``); exits 1 if anything differs.

    python benchmarks/gpu_identity.py --workdir /tmp/w --json identity.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--side", type=int, default=4096)
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated")
    parser.add_argument("--json")
    args = parser.parse_args()

    import torch
    import zarr

    from unet.bench.inputs import bench_image
    from unet.config import SegmentParameters
    from unet.engine.cluster import ClusterPlan, dask_client, gpu_plan
    from unet.engine.run import segment
    from unet.network.checkpoint import load_checkpoint, resolve_checkpoint
    from unet.predict import predict_window
    from unet.predict.step import normalized
    from unet.tiling import window_shape

    device = torch.device(args.device)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    checks: dict[str, bool] = {}
    mean, std = np.float32([97.3, 120.1, 33.0]), np.float32([41.7, 33.3, 0.77])
    for dtype in ("uint8", "uint16"):
        raw = rng.integers(0, np.iinfo(dtype).max, (2, 3, 301, 257), endpoint=True).astype(dtype)
        host = (raw.astype(np.float32) - mean[:, None, None]) / std[:, None, None]
        on_device = normalized(torch.from_numpy(raw).to(device), mean, std).cpu().numpy()
        checks[f"normalized {dtype}"] = bool(
            np.array_equal(host.view(np.uint32), on_device.view(np.uint32))
        )

    checkpoint = load_checkpoint(resolve_checkpoint("nuclei"), device=str(device))
    model = checkpoint.model
    tile, out_shape = 1116, (1500, 1300)  # 2 x 2 tiles
    window = rng.integers(
        0, 255, (1, *window_shape(out_shape, tile, model.geometry)), endpoint=True
    )
    window = window.astype(np.uint8)
    precisions = args.precisions.split(",")
    for precision in precisions:
        for labels in (False, True):
            options = {"tile_size": tile, "batch_size": 2, "device": device, "precision": precision}
            host = predict_window(
                model, checkpoint.normalize(window), out_shape, labels=labels, **options
            )
            raw = predict_window(
                model,
                window,
                out_shape,
                labels=labels,
                normalization=(checkpoint.mean, checkpoint.std),
                **options,
            )
            checks[f"predict_window {precision} {'labels' if labels else 'logits'}"] = bool(
                np.array_equal(host, raw)
            )

    image = bench_image(work, args.side, 1024, 1)
    parameters = SegmentParameters(
        model="nuclei", device=args.device, precision=precisions[-1], overwrite=True
    )
    masks = {}
    for name, plan in (
        ("simple", ClusterPlan(workers=1, torch_threads=1, gpus=1, threads_per_worker=4)),
        ("streamed", gpu_plan(1)),
    ):
        output = work / f"identity-{name}.zarr"
        shutil.rmtree(output, ignore_errors=True)
        with dask_client(plan) as client:
            segment(str(image), str(output), parameters, client=client, cluster=plan)
        masks[name] = zarr.open_group(str(output), mode="r")["0"][...]
    checks["streamed mask == simple mask"] = bool(
        np.array_equal(masks["simple"], masks["streamed"])
    )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    result = {"device": name, "side": args.side, "checks": checks}
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
