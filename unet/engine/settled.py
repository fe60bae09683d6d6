"""Chunks the driver settles before any task: no data by the plan, and background.

Two kinds of chunk need no model, and the plan knows them before anything is read:

- **No data by the plan.** Zarr leaves out chunks equal to the fill value, and reads a missing
  chunk as the fill value. When the input's fill value is no data for the run (equal to
  ``--nodata``, or NaN), an output chunk whose own pixels lie wholly in input chunks absent from
  the store, in every channel, is no data only: exactly what its task would find after reading
  them. Found from one listing of the input's keys (:func:`unet.io.presence.stored_grids`).
- **Background** (``--skip-background``): no tissue in a low-resolution view
  (:mod:`unet.engine.background`).

Both are marked finished in bulk (:func:`unet.engine.ledger.mark_bulk`: one write for all of
them) and write nothing where the mask's fill value already says what they hold: the no-data
label of a no-data chunk, and class 0 of a background chunk in a mask without no-data. A
background chunk of a mask whose fill value is the no-data label is left to a task, which
writes its zeros without the model (``ChunkJob.background``). Everything here is arithmetic on
grids of one byte per chunk.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from unet.engine.plan import RunPlan
    from unet.engine.report import SegmentReport
    from unet.io.source import ImageSource
    from unet.tiling import ChunkGrid


def settle_chunks(
    plan: RunPlan, group, todo: np.ndarray, report: SegmentReport, stored: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mark the chunks of ``todo`` that need no task finished, in bulk, and count them in
    ``report`` (``chunks_skipped``, the pixels of class 0 or of no data).

    Parameters
    ----------
    plan: the run's plan
    group: its output group (opened by :func:`unet.engine.output.open_output`)
    todo: bool (chunks_y, chunks_x), the chunks not finished yet
    stored: bool grid of the input's stored objects present in some channel
        (:func:`unet.io.presence.stored_grids`)

    Returns
    -------
    settled: bool grid, the chunks marked here
    background: bool grid, background chunks left to tasks, which write zeros over a fill value
        that is another label
    """
    from unet.engine.ledger import mark_bulk

    grid, parameters = plan.grid, plan.parameters
    nodata = nodata_chunks(plan.source, grid, parameters.nodata, stored) & todo
    background = np.zeros(grid.counts, bool)
    if parameters.skip_background:
        background = ~tissue_chunks(plan.source, grid) & todo & ~nodata
    fill = group["0"].fill_value
    settled = nodata | background if fill == 0 else nodata
    mark_bulk(group, settled)
    areas = chunk_areas(grid)
    report.chunks_skipped += int(settled.sum())
    nodata_area = int(areas[nodata].sum())
    if parameters.nodata is not None:
        report.nodata_pixels += nodata_area
    else:  # non-finite fill: label 0, as the chunk task would give it
        report.class_pixels[0] += nodata_area
    report.class_pixels[0] += int(areas[settled & ~nodata].sum())
    return settled, background if fill != 0 else np.zeros_like(background)


def nodata_chunks(
    source: ImageSource, grid: ChunkGrid, nodata: float | None, stored: np.ndarray
) -> np.ndarray:
    """bool (chunks_y, chunks_x): output chunks whose own pixels all lie in input chunks absent
    from the store in every channel (``stored``: present in some channel), where the input's
    fill value is no data for the run (equal to ``nodata``, or not finite); all False otherwise."""
    from unet.io.presence import stored_chunk_shape
    from unet.tiling import cells_in_chunks

    fill = _fill_value(source)
    if fill is None or not (not math.isfinite(fill) or (nodata is not None and fill == nodata)):
        return np.zeros(grid.counts, bool)
    return cells_in_chunks(stored, stored_chunk_shape(source), grid) == 0


def tissue_chunks(source: ImageSource, grid: ChunkGrid) -> np.ndarray:
    """bool (chunks_y, chunks_x): chunks with tissue in a low-resolution view of ``source``."""
    from unet.engine.background import chunks_with_tissue, tissue_mask

    low, factor = source.low_resolution()
    # One low-resolution pixel of margin: tissue seen only between the strided samples counts.
    return chunks_with_tissue(tissue_mask(low, dilation=1), factor, grid)


def chunk_areas(grid: ChunkGrid) -> np.ndarray:
    """int64 (chunks_y, chunks_x): pixels of each chunk."""
    (height, width), (ch, cw) = grid.shape, grid.chunks
    rows = np.minimum(np.arange(0, height, ch) + ch, height) - np.arange(0, height, ch)
    cols = np.minimum(np.arange(0, width, cw) + cw, width) - np.arange(0, width, cw)
    return np.outer(rows, cols).astype(np.int64)


def _fill_value(source: ImageSource) -> float | None:
    """The fill value of the input's level 0, as a float; None when it declares none."""
    import zarr

    fill = zarr.open_array(store=source.url, path=source.array_path, mode="r").fill_value
    if fill is None:
        return None
    try:
        return float(fill)
    except (TypeError, ValueError):
        return None
