#!/usr/bin/env bash
# The GPU benchmark of issue #17, for a lent GPU machine (about 6 minutes; results in $OUT).
#
#   1. the streamed GPU worker against the simple path: the same mask bits on this GPU;
#   2. the paper U-Net (base 64, depth 4) in bf16, tile 1212, batch 1: the raw model, the
#      pipeline on 8192^2 and 16384^2, MONAI's sliding window on 8192^2 (gpu-paper.json:
#      targets pipeline >= 0.9 x raw model, >= 2x MONAI);
#   3. the same pipeline with the device simulated at the raw model's measured speed, and at
#      "inf" (the data path's ceiling on this machine's CPUs): does the simulation predict the
#      real run? With two or more GPUs, one and two simulated devices (gpu-simulated*.json).
#
# Run from the repository root on the GPU machine: bash benchmarks/gpu.sh
set -uo pipefail
source benchmarks/device_setup.sh
started=$SECONDS
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, zarr, dask, monai; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(), 'gpus', torch.cuda.device_count(), 'cpus', __import__('os').cpu_count())" | tee -a "$OUT/gpu.txt" || exit 1
GPUS=$(python3 -c "import torch; print(torch.cuda.device_count())")

# 1. Bit-identity on this GPU: raw uint8/uint16 normalized on the device equal numpy's floats;
# a streamed run's mask equals the simple path's.
timeout 120 python3 benchmarks/gpu_identity.py --workdir "$WORK" --json "$OUT/gpu-identity.json" \
    2>&1 | tail -5 | tee "$OUT/gpu-identity.log"

# 2. Raw model, pipeline and MONAI (images rendered once into $WORK, in parallel).
timeout 240 python3 benchmarks/bench.py --device cuda --precision bf16 --paper --batch-size 1 \
    --sides 8192,16384 --monai-side 8192 --tile-sweep 1212 --agreement-side 1024 \
    --workdir "$WORK" --json "$OUT/gpu-paper.json" 2>&1 | tee "$OUT/gpu-paper.log" | tail -25

# 3. The simulated device at the raw model's sustained speed next to the pipeline, then inf.
RAW=$(python3 -c "
import json; r = json.load(open('$OUT/gpu-paper.json'))['pipeline'][-1]
print(round(sum(r['raw_adjacent_sustained_mpx_per_s']) / 2, 2))" 2>/dev/null || echo 133)
DEVICES=1
if [ "$GPUS" -ge 2 ]; then DEVICES=1,2; fi
for SPEED in "$RAW" inf; do
    timeout 120 python3 benchmarks/bench.py --simulate-device "$SPEED" --simulated-devices "$DEVICES" \
        --paper --batch-size 1 --sides 16384 --workdir "$WORK" \
        --json "$OUT/gpu-simulated-$SPEED.json" 2>&1 | tee "$OUT/gpu-simulated-$SPEED.log" | tail -14
done
echo "gpu.sh took $((SECONDS - started)) s" | tee -a "$OUT/gpu.txt"
