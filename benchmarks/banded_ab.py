"""The plain forward pass against banded inference (unet/banded.py) at several band heights.

Speed: the settings take turns in one process on the same tile (a shared machine's speed drifts
over minutes), median seconds per pass. Memory: each setting again in a fresh process, its peak
RSS (VmHWM) after a few passes, with unet's malloc settings as in the pipeline.

    .venv/bin/python benchmarks/banded_ab.py --tile 1116 --bands 32,64,128,4096

``--compile`` adds ``torch.compile(model)`` (Inductor) to the speed comparison, with its compile
time and its largest difference from ``model(x)``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _setup(model_name: str, tile: int):
    from unet.engine.allocator import reuse_freed_memory

    reuse_freed_memory()
    import torch

    from unet.network.checkpoint import load_checkpoint, resolve_checkpoint
    from unet.predict.step import use_channels_last

    model = load_checkpoint(resolve_checkpoint(model_name)).model.eval()
    use_channels_last(model)
    inputs = torch.rand(
        1, model.in_channels, tile, tile, generator=torch.Generator().manual_seed(0)
    )
    return model, inputs.contiguous(memory_format=torch.channels_last)


def _pass(model, inputs, band: int | None):
    from unet.network.banded import banded_forward

    return model(inputs) if band is None else banded_forward(model, inputs, band)


def _peak_rss_mib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) // 1024
    return -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=1116)
    parser.add_argument("--bands", default="32,64,128,4096", help="band rows, comma-separated")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--compile", action="store_true", help="also torch.compile(model)")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    model, inputs = _setup(args.model, args.tile)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    if args.one is not None:  # the fresh process of one memory measurement
        band = None if args.one == 0 else args.one
        with torch.inference_mode(), autocast:
            for _ in range(4):
                _pass(model, inputs, band)
        print(json.dumps(_peak_rss_mib()))
        return

    settings: list[int | None] = [None, *(int(b) for b in args.bands.split(","))]
    times: dict[int | None, list[float]] = {band: [] for band in settings}
    compiled_times: list[float] = []
    with torch.inference_mode(), autocast:
        for band in settings:  # warm-up: oneDNN's kernels and the heap
            _pass(model, inputs, band)
        if args.compile:
            started = time.perf_counter()
            compiled = torch.compile(model, dynamic=False)
            difference = (compiled(inputs).float() - model(inputs).float()).abs().max().item()
            print(f"torch.compile: {time.perf_counter() - started:.1f} s to compile and run once")
            print(f"torch.compile: largest logit difference from model(x) {difference:.4g}")
        for _ in range(args.rounds):
            for band in settings:
                started = time.perf_counter()
                _pass(model, inputs, band)
                times[band].append(time.perf_counter() - started)
            if args.compile:
                started = time.perf_counter()
                compiled(inputs)
                compiled_times.append(time.perf_counter() - started)
    plain = statistics.median(times[None])
    if compiled_times:
        median = statistics.median(compiled_times)
        print(f"{'torch.compile':<20} {median:.4f} s a pass ({median / plain:.3f} of model(x))")
    for band in settings:
        command = [sys.executable, __file__, "--tile", str(args.tile), "--model", args.model]
        peak = subprocess.run(
            [*command, "--one", str(band or 0)], capture_output=True, text=True, check=True
        ).stdout
        median = statistics.median(times[band])
        name = "model(x)" if band is None else f"banded, {band} rows"
        print(
            f"{name:<20} {median:.4f} s a pass ({median / plain:.3f} of model(x)), "
            f"peak RSS {json.loads(peak)} MiB"
        )


if __name__ == "__main__":
    main()
