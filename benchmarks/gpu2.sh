#!/usr/bin/env bash
# Second GPU pass (after the zarrs codec pipeline): where a chunk's time goes on the GPU
# machine, then the pipeline and MONAI again, and chunks in flight per GPU worker.
set -uo pipefail
source benchmarks/device_setup.sh
python3 -c "import zarrs; from unet import bench; from pathlib import Path; bench._image(Path('$WORK'), 8192, 1024, 1)" || exit 1
timeout 90 python3 benchmarks/chunk_profile.py "$WORK/nuclei-8192-c1024-ch1.zarr" --device cuda \
    --paper --chunks 48 2>&1 | tee "$OUT/gpu-chunk-profile.log"
timeout 200 python3 -m unet.bench --device cuda --precision bf16 --paper --batch-size 1 \
    --sides 8192 16384 --monai-side 8192 --tile-sweep 1212 2236 --workdir "$WORK" \
    --json "$OUT/gpu-paper.json" --plot "$OUT/gpu-paper.png" 2>&1 | tee "$OUT/gpu-paper.log"
timeout 120 python3 benchmarks/gpu_sweep.py --workdir "$WORK" --side 16384 --batches 1 \
    --threads 2 8 16 --json "$OUT/gpu-sweep.json" 2>&1 | tee "$OUT/gpu-sweep.log"
