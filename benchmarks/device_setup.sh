# Sourced by benchmarks/gpu*.sh on a lent GPU machine: $OUT for results, and the wheels of .whl/
# (zarr, zarrs, dask, distributed, pydantic, monai, ...) that the machine cannot download,
# installed beside its own CUDA torch.
OUT=${OUT:-/tmp/unet-gpu-bench}
mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
WORK=/tmp/unet-gpu-work
mkdir -p "$WORK"
