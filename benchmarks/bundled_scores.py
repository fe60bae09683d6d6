"""How a nuclei model scores on images it never saw: the figures of unet/models/README.md.

- ``default``: 8 default generated scenes (``nuclei_image``, seeds 10000..10007, 256 x 256);
- ``varied``: 8 varied scenes (``NucleiScene.varied``, seeds 20000..20007, 256 x 256);
- ``demo``: a 2048 x 2048 region (rows and columns 3072..5119) of the demo's 8192 x 8192 slide
  (``NucleiScene`` seed 2026), whose foreground Dice ``make demo`` promises to be >= 0.97;
- ``real``: with ``--real DIR``, the fluorescence image ``DIR/img2d.tif`` with its labels
  ``DIR/mask2d.tif`` (see benchmarks/real_finetune.py for where they come from).

Foreground Dice and IoU pooled per image and averaged, and object F1 (IoU >= 0.5, objects are
the connected components of the predicted foreground), from ``unet.evaluate``; predicted at the
demo's precision ``auto`` (bf16 on CPUs that compute it natively) unless ``--precision``.

    .venv/bin/python benchmarks/bundled_scores.py unet/models/nuclei.safetensors --real DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEMO_REGION = slice(3072, 5120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="checkpoint or bundled model name")
    parser.add_argument("--real", type=Path, help="folder holding img2d.tif and mask2d.tif")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="auto", help="as the demo: bf16 where native")
    args = parser.parse_args()

    import torch

    from unet import evaluate, load_checkpoint, predict_array
    from unet.io.files import read_array, read_labels
    from unet.predict.device import resolve_precision
    from unet.training.synthetic import NucleiScene, nuclei_image, render

    torch.set_num_threads(args.threads)
    checkpoint = load_checkpoint(args.model)

    def score(image: np.ndarray, truth: np.ndarray) -> dict:
        logits = predict_array(
            checkpoint.model, checkpoint.normalize(image), precision=args.precision
        )
        return evaluate(logits.argmax(axis=0), truth, instances=True)

    def summary(scores: list[dict]) -> dict:
        return {
            "images": len(scores),
            "foreground_dice": round(float(np.mean([s["foreground_dice"] for s in scores])), 4),
            "foreground_iou": round(float(np.mean([s["foreground_iou"] for s in scores])), 4),
            "object_f1": round(float(np.mean([s["objects"]["f1"] for s in scores])), 4),
        }

    results = {"precision": resolve_precision(args.precision, "cpu")}
    for name, seed, varied in (("default", 10000, False), ("varied", 20000, True)):
        pairs = [nuclei_image((256, 256), seed + i, varied=varied) for i in range(8)]
        results[name] = summary([score(image[None], labels) for image, labels in pairs])
        print(name, results[name], flush=True)
    image, labels = render(NucleiScene(shape=(8192, 8192), seed=2026), DEMO_REGION, DEMO_REGION)
    results["demo"] = summary([score(image, labels)])
    print("demo", results["demo"], flush=True)
    if args.real:
        truth = read_labels(args.real / "mask2d.tif")
        results["real"] = summary([score(read_array(args.real / "img2d.tif"), truth)])
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
