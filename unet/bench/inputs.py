"""Inputs of the benchmark: a checkpoint (bundled, or random of a given shape) and generated
OME-Zarr nuclei images, made once per work folder."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

#: Chunk side of the generated input images (and so of the mask).
BENCH_CHUNK = 1024


#: Pixels between the generated tissue and the chunk borders (see :func:`bench_image`).
TISSUE_INSET = 32


#: The paper's network (``--paper``).
PAPER_CONFIG = {"base_channels": 64, "depth": 4}


def bench_checkpoint(
    work: Path,
    model: str | None = None,
    base_channels: int | None = None,
    depth: int | None = None,
    paper: bool = False,
    quick: bool = False,
) -> str:
    """The checkpoint to benchmark: ``model`` (a path or bundled name; default ``nuclei``), or a
    random valid-padding U-Net written into ``work`` when a shape is asked for (``paper``: base
    64, depth 4; ``quick`` without a shape: base 4, depth 2)."""
    from unet.network.checkpoint import resolve_checkpoint, save_checkpoint
    from unet.network.model import UNet

    if model is not None and not (base_channels or depth or paper):
        return str(resolve_checkpoint(model))
    if not (base_channels or depth or paper):
        if not quick:
            return str(resolve_checkpoint("nuclei"))
        base_channels, depth = 4, 2
    config = dict(PAPER_CONFIG) if paper else {"base_channels": 16, "depth": 3}
    if base_channels:
        config["base_channels"] = base_channels
    if depth:
        config["depth"] = depth
    import torch

    torch.manual_seed(0)
    path = work / f"random-b{config['base_channels']}-d{config['depth']}.safetensors"
    save_checkpoint(path, UNet(**config), mean=43.85, std=48.45)
    return str(path)


def bench_image(
    work: Path, side: int, chunk: int, channels: int, tissue: float | None = None
) -> Path:
    """An OME-Zarr nuclei image of ``side``^2 with ``chunk`` chunks, generated once per workdir.

    With ``tissue`` only a centred square of that area fraction (on the chunk grid) holds the
    scene, inset by ``TISSUE_INSET`` pixels from the chunk borders (skipping keeps a margin of
    a few pixels around tissue, which would otherwise reach the neighbouring chunks); the rest
    stays 0.
    """
    from unet.io.omezarr import create_image
    from unet.training.synthetic import NucleiScene

    name = f"nuclei-{side}-c{chunk}-ch{channels}" + (
        f"-t{tissue}-i{TISSUE_INSET}" if tissue is not None else ""
    )
    path = work / f"{name}.zarr"
    # The mark of a finished image lies beside it: zarr warns of a file it does not know inside.
    done = work / f"{name}.complete"
    if done.exists():
        return _with_pyramid(path)
    array = create_image(path, (channels, side, side), "uint8", (chunk, chunk), overwrite=True)
    scene = NucleiScene(shape=(side, side), seed=0)
    lo, hi = 0, side
    if tissue is not None:
        square = int(round(side * tissue**0.5 / chunk)) * chunk
        lo = (side - square) // 2 // chunk * chunk
        hi = lo + square

    def render_chunk(origin: tuple[int, int]) -> None:
        y, x = origin
        rows, cols = slice(y, min(y + chunk, side)), slice(x, min(x + chunk, side))
        block, _ = scene.render(rows, cols)
        if tissue is not None:
            inside_y = (np.arange(rows.start, rows.stop) >= lo + TISSUE_INSET) & (
                np.arange(rows.start, rows.stop) < hi - TISSUE_INSET
            )
            inside_x = (np.arange(cols.start, cols.stop) >= lo + TISSUE_INSET) & (
                np.arange(cols.start, cols.stop) < hi - TISSUE_INSET
            )
            block = block * (inside_y[:, None] & inside_x[None, :])
        array[:, rows, cols] = np.repeat(block, channels, axis=0)

    # Chunks apart, in threads: the scene draws any region alike, and each job writes its own
    # chunk (in one thread a 16384^2 image took most of a GPU machine's lease).
    origins = [(y, x) for y in range(lo, hi, chunk) for x in range(lo, hi, chunk)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for _ in pool.map(render_chunk, origins):
            pass  # re-raises the first failure
    done.write_text("")
    return _with_pyramid(path)


def _with_pyramid(path: Path) -> Path:
    """``path``, with the pyramid ``unet ingest`` would give it (readers of a low-resolution
    view, the value-range check and the preview, read a level of it, as they do on a real
    slide)."""
    import zarr

    from unet.io.pyramid import build_pyramid

    if "1" not in zarr.open_group(str(path), mode="r").array_keys():
        build_pyramid(str(path), reduction="mean")
    return path
