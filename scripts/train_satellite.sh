#!/usr/bin/env bash
# Reproduce the bundled model unet/models/satellite.safetensors and score it on unseen scenes.
#
#   scripts/train_satellite.sh [WORK_DIR [CHECKPOINT]]
#
# 1. writes the training set of scripts/make_scene.py (32 generated scenes of 384 x 384, seeds
#    100..131) into WORK_DIR/sat-train;
# 2. trains a small U-Net on it with `unet train` (800 steps of Adam, one CPU thread, seed 0)
#    into WORK_DIR/satellite.safetensors, with its plot beside it;
# 3. stores the band names (red, green, blue, nir, as make_scene.py describes the scene's
#    bands: segment then checks them) and map colours of the classes with it, into CHECKPOINT;
# 4. scores it with benchmarks/satellite_scores.py on scenes it never saw.
# CHECKPOINT defaults to unet/models/satellite.safetensors (replaced); PYTHON overrides the
# interpreter (default .venv/bin/python). Bit-identical weights need the same torch version and
# thread count.
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-$(mktemp -d)}"
checkpoint="${2:-unet/models/satellite.safetensors}"
python="${PYTHON:-.venv/bin/python}"
unet="$(dirname "$python")/unet"
nice "$python" scripts/make_scene.py --no-scene --out "$work"
OMP_NUM_THREADS=1 nice "$unet" train "$work/sat-train" --out "$work/satellite.safetensors" \
    --base-channels 16 --depth 3 --steps 800 --batch-size 4 --optimizer adam --seed 0 \
    --val-fraction 0.1 --class-map 1:1,2:2,3:3,4:4 \
    --class-names other,field,road,building,water --overwrite
"$python" - "$work/satellite.safetensors" "$checkpoint" <<'PY'
import sys

from unet import load_checkpoint
from unet.network.checkpoint import save_checkpoint

trained = load_checkpoint(sys.argv[1])
save_checkpoint(
    sys.argv[2],
    trained.model,
    mean=trained.mean,
    std=trained.std,
    class_names=trained.class_names,
    # other, field, road, building, water
    colours=[(200, 200, 190), (230, 200, 60), (90, 90, 90), (220, 40, 40), (40, 110, 220)],
    **{**trained.metadata, "band_names": ["red", "green", "blue", "nir"]},
)
PY
nice "$python" benchmarks/satellite_scores.py "$checkpoint"
