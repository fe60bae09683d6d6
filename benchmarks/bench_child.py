"""One measurement of the benchmark, in a fresh process: ``python bench_child.py SPEC_JSON``.

Prints the result as one JSON line. MONAI's sliding window is measured here; the raw model, the
pipeline and the precision agreement by :func:`unet.bench.measure.measure`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from unet.bench.measure import gpu_peak_mib, high_water_mib, measure, prepared_model, synchronize
from unet.engine.allocator import reuse_freed_memory


def measure_child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement in this process: MONAI here, the others by :func:`unet.bench.measure.measure`."""
    if spec["kind"] != "monai":
        return measure(spec)
    reuse_freed_memory()  # as unet.bench.measure.measure does for the others
    result = measure_monai(spec)
    result.update(
        kind="monai", loadavg=round(os.getloadavg()[0], 2), high_water_mib=high_water_mib()
    )
    return result


def measure_monai(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from monai.inferers import sliding_window_inference

    from unet.io.source import open_image
    from unet.predict.device import autocast

    checkpoint, model, device = prepared_model(spec, padding="same")
    align = spec["align"]
    roi = -(-spec["tile_size"] // align) * align  # the tile side rounded up to the pooling grid
    source = open_image(spec["image"])
    raw = source.read(slice(0, source.shape[1]), slice(0, source.shape[2]))
    image = torch.from_numpy(checkpoint.normalize(raw))[None]  # (1, C, H, W), held in memory
    del raw

    def infer(inputs):
        with torch.inference_mode(), autocast(device, spec["precision"]):
            logits = sliding_window_inference(
                inputs,
                roi_size=(roi, roi),
                sw_batch_size=spec["batch_size"],
                predictor=model,
                overlap=0.25,
                mode="gaussian",
                sw_device=device,
                device=device,
                progress=False,
            )
            mask = logits.argmax(1).to(torch.uint8).cpu()
        synchronize(device)
        return mask

    infer(image[..., :roi, :roi])  # warm-up
    started = time.perf_counter()
    mask = infer(image)
    seconds = time.perf_counter() - started
    megapixels = image.shape[-2] * image.shape[-1] / 1e6
    return {
        "side": spec["side"],
        "roi_size": roi,
        "overlap": 0.25,
        "mode": "gaussian",
        "megapixels": round(megapixels, 3),
        "seconds": round(seconds, 3),
        "mpx_per_s": round(megapixels / seconds, 4),
        "foreground_fraction": round(float((mask > 0).float().mean()), 4),
        "gpu_peak_mib": gpu_peak_mib(device),
    }


if __name__ == "__main__":
    print(json.dumps(measure_child(json.loads(sys.argv[1]))), flush=True)
