#!/usr/bin/env bash
# The GPU benchmark as run on a lent H100 (see README, Benchmarks). Results go to $OUT.
set -uo pipefail
source benchmarks/device_setup.sh
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, zarr, dask, monai; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt" || exit 1
timeout 90 python3 benchmarks/bench.py --quick --device cuda --precision bf16 --no-monai 2>&1 | tail -4
timeout 300 python3 benchmarks/bench.py --device cuda --precision bf16 --paper --batch-size 1 \
    --sides 8192,16384 --monai-side 8192 --tile-sweep 444,700,1212,2236 --workdir "$WORK" \
    --json "$OUT/gpu-paper.json" --plot "$OUT/gpu-paper.png" 2>&1 | tee "$OUT/gpu-paper.log"
timeout 150 python3 benchmarks/gpu_sweep.py --workdir "$WORK" --side 16384 \
    --json "$OUT/gpu-sweep.json" 2>&1 | tee "$OUT/gpu-sweep.log"
