#!/usr/bin/env bash
# Reproduce the bundled model unet/models/nuclei.safetensors and measure it on held-out images.
#
#   scripts/train_bundled.sh [WORK_DIR [CHECKPOINT [REAL_DIR]]]
#
# 1. writes the training images to WORK_DIR/train: 16 default nuclei scenes (crisp, bright;
#    scene seeds 0..15) and 32 varied ones (NucleiScene.varied: out of focus, dim, noisy, small
#    and large nuclei; seeds 100..131), all 256 x 256,
# 2. trains a small U-Net on them (one CPU thread: bit-identical weights need the same thread
#    count), writing CHECKPOINT and its plot CHECKPOINT%.safetensors.png,
# 3. scores it on images it never saw: 8 default scenes (seeds 10000..10007) and 8 varied ones
#    (seeds 20000..20007), and on the real image REAL_DIR/img2d.tif with REAL_DIR/mask2d.tif
#    when REAL_DIR is given (see benchmarks/real_finetune.py for where it comes from).
# CHECKPOINT defaults to unet/models/nuclei.safetensors (replaced); PYTHON overrides the
# interpreter (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-$(mktemp -d)}"
checkpoint="${2:-unet/models/nuclei.safetensors}"
real="${3:-}"
export OMP_NUM_THREADS=1
nice "${PYTHON:-.venv/bin/python}" - "$work" "$checkpoint" "$real" <<'PY'
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from unet import evaluate, load_checkpoint, predict_array, train
from unet.io.files import read_array, read_labels
from unet.training.synthetic import write_nuclei_dataset

torch.set_num_threads(1)
work, checkpoint_path, real = sys.argv[1], sys.argv[2], sys.argv[3]
train_dir = write_nuclei_dataset(f"{work}/train", count=16, size=256, seed=0)
write_nuclei_dataset(train_dir, count=32, size=256, seed=100, varied=True)
tests = {
    "default": write_nuclei_dataset(f"{work}/test-default", count=8, size=256, seed=10000),
    "varied": write_nuclei_dataset(
        f"{work}/test-varied", count=8, size=256, seed=20000, varied=True
    ),
}
started = time.perf_counter()
result = train(
    train_dir,
    checkpoint_path,
    base_channels=16,
    depth=3,
    steps=600,
    batch_size=4,
    lr=0.01,
    optimizer="sgd",
    seed=0,
    val_fraction=0.1,
    class_names=["background", "nucleus"],
    overwrite=True,
)
print(f"trained in {time.perf_counter() - started:.0f} s: {result}")

checkpoint = load_checkpoint(checkpoint_path)


def score(image, truth):
    logits = predict_array(checkpoint.model, checkpoint.normalize(image))
    return evaluate(logits.argmax(axis=0), truth, instances=True)


summary = {}
for name, test_dir in tests.items():
    scores = [
        score(read_array(path), read_labels(test_dir / "masks" / path.name))
        for path in sorted((test_dir / "images").iterdir())
    ]
    summary[name] = {
        "images": len(scores),
        "foreground_dice": round(float(np.mean([s["foreground_dice"] for s in scores])), 4),
        "foreground_iou": round(float(np.mean([s["foreground_iou"] for s in scores])), 4),
        "object_f1": round(float(np.mean([s["objects"]["f1"] for s in scores])), 4),
    }
if real:
    image = read_array(Path(real) / "img2d.tif")
    truth = read_labels(Path(real) / "mask2d.tif")
    scores = score(image, truth)
    summary["real img2d.tif"] = {
        "foreground_dice": round(scores["foreground_dice"], 4),
        "object_f1": round(scores["objects"]["f1"], 4),
    }
print(json.dumps(summary, indent=2))
PY
