#!/usr/bin/env bash
# Reproduce the bundled model unet/models/nuclei.safetensors and measure it on held-out images.
#
#   scripts/train_bundled.sh [WORK_DIR [CHECKPOINT [REAL_DIR]]]
#
# 1. writes the training images to WORK_DIR/train: 16 default nuclei scenes (crisp, bright;
#    scene seeds 0..15) and 32 varied ones (NucleiScene.varied: out of focus, dim, noisy, small
#    and large nuclei; seeds 100..131), all 256 x 256,
# 2. trains a small U-Net on them in three stages: 600 steps of SGD at lr 0.01 from scratch
#    (WORK_DIR/stage1.safetensors, one CPU thread); 150 steps fine-tuned from it (--init, so lr
#    0.001: a step decay of the rate; two threads; WORK_DIR/stage2.safetensors); 100 steps
#    fine-tuned from that on 32 default scenes only (seeds 0..31 in WORK_DIR/default; two
#    threads), which keeps the crisp scenes that `make demo` draws at Dice >= 0.97, writing
#    CHECKPOINT and its plot (CHECKPOINT with suffix .png). Bit-identical weights need the same
#    thread counts;
# 3. scores it with benchmarks/bundled_scores.py on images it never saw (default and varied
#    scenes, a region of the demo slide) and on the real image in REAL_DIR when given (see
#    benchmarks/real_finetune.py for where it comes from).
# CHECKPOINT defaults to unet/models/nuclei.safetensors (replaced); PYTHON overrides the
# interpreter (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-$(mktemp -d)}"
checkpoint="${2:-unet/models/nuclei.safetensors}"
real="${3:-}"
python="${PYTHON:-.venv/bin/python}"
export OMP_NUM_THREADS=2
nice "$python" - "$work" "$checkpoint" <<'PY'
import sys
import time

import torch

from unet import train
from unet.training.synthetic import write_nuclei_dataset

work, checkpoint_path = sys.argv[1], sys.argv[2]
train_dir = write_nuclei_dataset(f"{work}/train", count=16, size=256, seed=0)
write_nuclei_dataset(train_dir, count=32, size=256, seed=100, varied=True)
torch.set_num_threads(1)
started = time.perf_counter()
stage1 = train(
    train_dir,
    f"{work}/stage1.safetensors",
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
print(f"stage 1 in {time.perf_counter() - started:.0f} s: {stage1}")
torch.set_num_threads(2)
started = time.perf_counter()
stage2 = train(
    train_dir,
    f"{work}/stage2.safetensors",
    init=str(stage1.path),
    steps=150,
    batch_size=4,
    optimizer="sgd",
    seed=1,
    val_fraction=0.1,
    overwrite=True,
)
print(f"stage 2 in {time.perf_counter() - started:.0f} s: {stage2}")
default_dir = write_nuclei_dataset(f"{work}/default", count=32, size=256, seed=0)
started = time.perf_counter()
result = train(
    default_dir,
    checkpoint_path,
    init=str(stage2.path),
    steps=100,
    batch_size=4,
    optimizer="sgd",
    seed=2,
    val_fraction=0.1,
    overwrite=True,
)
print(f"stage 3 in {time.perf_counter() - started:.0f} s: {result}")
PY
nice "$python" benchmarks/bundled_scores.py "$checkpoint" ${real:+--real "$real"}
