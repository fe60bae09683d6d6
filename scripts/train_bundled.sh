#!/usr/bin/env bash
# Reproduce the bundled model unet/models/nuclei.safetensors and measure it on held-out images.
#
#   scripts/train_bundled.sh [WORK_DIR [CHECKPOINT]]
#
# 1. writes 24 synthetic nuclei images (256 x 256, scene seeds 0..23) to WORK_DIR/train,
# 2. trains a small U-Net on them (one CPU thread: bit-identical weights need the same thread
#    count; a few minutes),
# 3. scores it on 8 images it never saw (seeds 10000..10007) in WORK_DIR/test.
# CHECKPOINT defaults to unet/models/nuclei.safetensors (replaced); PYTHON overrides the
# interpreter (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-$(mktemp -d)}"
checkpoint="${2:-unet/models/nuclei.safetensors}"
export OMP_NUM_THREADS=1
nice "${PYTHON:-.venv/bin/python}" - "$work" "$checkpoint" <<'PY'
import json
import sys
import time

import numpy as np
import torch

from unet.checkpoint import load_checkpoint
from unet.evaluate import evaluate, read_array, read_labels
from unet.predict import predict_array
from unet.synthetic import write_nuclei_dataset
from unet.train import train

torch.set_num_threads(1)
work, checkpoint_path = sys.argv[1], sys.argv[2]
train_dir = write_nuclei_dataset(f"{work}/train", count=24, size=256, seed=0)
test_dir = write_nuclei_dataset(f"{work}/test", count=8, size=256, seed=10000)
started = time.perf_counter()
result = train(
    train_dir,
    checkpoint_path,
    base_channels=16,
    depth=3,
    steps=300,
    batch_size=4,
    lr=0.01,
    optimizer="sgd",
    seed=0,
    val_fraction=0.2,
    class_names=["background", "nucleus"],
    overwrite=True,
)
print(f"trained in {time.perf_counter() - started:.0f} s: {result}")

checkpoint = load_checkpoint(checkpoint_path)
scores = []
for image_path in sorted((test_dir / "images").iterdir()):
    image = read_array(image_path)
    truth = read_labels(test_dir / "masks" / image_path.name)
    logits = predict_array(checkpoint.model, checkpoint.normalize(image))
    scores.append(evaluate(logits.argmax(axis=0), truth, instances=True))
summary = {
    "held_out_images": len(scores),
    "foreground_dice": float(np.mean([s["foreground_dice"] for s in scores])),
    "foreground_iou": float(np.mean([s["foreground_iou"] for s in scores])),
    "object_f1": float(np.mean([s["objects"]["f1"] for s in scores])),
}
print(json.dumps(summary, indent=2))
PY
