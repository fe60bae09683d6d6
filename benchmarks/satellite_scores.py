"""How a satellite model scores on generated scenes it never saw: the figures of
unet/models/README.md for ``satellite.safetensors``.

- ``scenes``: 8 scenes of 512 x 512 (``SatelliteScene``, seeds 10000..10007);
- ``walkthrough``: the 4096 x 4096 scene of ``scripts/make_scene.py`` (seed 1), rows and
  columns 1024..3071 (outside its no-data corner).

The images are the scenes' uint8 bands as ``scripts/make_scene.py`` writes them (uint16
reflectance ``40 * value + 1``). Dice per class pooled over the images of a set, and the
foreground Dice (classes 1..4, mean of those present), from ``unet.evaluate``.

    .venv/bin/python benchmarks/satellite_scores.py unet/models/satellite.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="checkpoint or bundled model name")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="the 8 small scenes only")
    args = parser.parse_args()

    import torch

    from unet import load_checkpoint, predict_array
    from unet.results.evaluate import confusion_matrix, dice_iou
    from unet.training.synthetic import SatelliteScene, render, satellite_reflectance

    torch.set_num_threads(args.threads)
    checkpoint = load_checkpoint(args.model)
    classes = len(checkpoint.class_names)

    def confusion(scene: SatelliteScene, rows: slice, cols: slice) -> np.ndarray:
        image, truth = render(scene, rows, cols)
        logits = predict_array(checkpoint.model, checkpoint.normalize(satellite_reflectance(image)))
        return confusion_matrix(logits.argmax(axis=0), truth, classes)

    def summary(matrix: np.ndarray) -> dict:
        dice, _ = dice_iou(matrix)
        present = [d for d in dice[1:] if d is not None]
        return {
            "dice": dict(zip(checkpoint.class_names, [round(d, 4) for d in dice], strict=True)),
            "foreground_dice": round(float(np.mean(present)), 4),
        }

    everything = slice(0, 512)
    scenes = sum(
        confusion(SatelliteScene(shape=(512, 512), seed=10000 + i), everything, everything)
        for i in range(8)
    )
    results = {"scenes": summary(scenes)}
    print("scenes", results["scenes"], flush=True)
    if not args.quick:
        region = slice(1024, 3072)
        walkthrough = confusion(SatelliteScene(shape=(4096, 4096), seed=1), region, region)
        results["walkthrough"] = summary(walkthrough)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
