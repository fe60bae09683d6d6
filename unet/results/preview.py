"""A picture of a result that reads at any scale: where the objects are, and what they look like.

A whole slide's mask shrunk to a few hundred pixels is noise: objects a few pixels wide vanish or
alias. So the preview of an image larger than :data:`SHRUNK_SIDE` shows two panels:

- the **overview**: the whole image, each cell of it (1/64 of its longer side, at least
  :data:`MIN_CELL` pixels) coloured by the share of its pixels in each class, over the image's
  mean brightness per cell: a heat map that reads the same at any scale. The shares come from a
  pyramid level of the mask (:data:`FRACTION_SIDE`);
- a **crop at full resolution** (:data:`CROP_SIDE`) of the region holding the most objects, the
  mask's colours over the image, outlined on the overview.

An image of at most :data:`SHRUNK_SIDE` pixels a side has the whole image, shrunk to
:data:`MAX_SIDE` with the mask's colours, as its overview (its objects are shrunk at most by
half); one that fits :data:`MAX_SIDE` is shown whole at full resolution, in one panel. A title,
the panels' captions and a legend of the classes (names and colours from the mask's OME
``image-label`` metadata) are drawn into the PNG; the same text is :attr:`Preview.caption`, so
the PNG beside the mask (``<name>.preview.png``, :func:`preview_path`) and the markdown artifact
that embeds it say the same.

Only a pyramid level of the mask, the input's low-resolution view and one crop are read (the
whole image for one of at most :data:`SHRUNK_SIDE`); the pixel work is numpy on arrays of at
most :data:`FRACTION_SIDE` a side.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unet.results.figure import Ramp, Swatch, compose, outline
from unet.sizes import size_label

#: Longest side of the overview panel, in pixels; images up to this size are shown whole.
MAX_SIDE = 512
#: A whole image smaller than this is drawn enlarged, by a whole factor.
SMALL_SIDE = 256
#: An image up to this size is shown whole, shrunk at most by half, its objects still visible;
#: a larger one as a heat map of class shares.
SHRUNK_SIDE = 2 * MAX_SIDE
#: The heat map's cells are at least this many pixels a side: a few objects each.
MIN_CELL = 32
#: Side of the full-resolution crop, in pixels.
CROP_SIDE = 384
#: Cells of the overview's heat map along the image's longer side.
CELLS = 64
#: The class shares are counted on the finest mask level whose sides are at most this.
FRACTION_SIDE = 2048
#: Opacity of a label colour over the image at full resolution.
ALPHA = 0.45
#: Opacity of a heat-map cell at full share, and how much the grey image under it is dimmed.
HEAT_ALPHA = 0.85
DIMMED = 0.75
#: Full colour in the heat map: the smallest of these at or above the highest share of a cell.
SCALE_STEPS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0)

#: Width in pixels of the legend's colour scale.
RAMP_WIDTH = 120


@dataclass(frozen=True)
class Preview:
    """A rendered preview: the PNG and the text drawn into it.

    Attributes
    ----------
    png: the PNG file's bytes (RGB)
    title: the mask's name and the image's size
    caption: what the panels show, one sentence per panel (the same text is in the PNG)
    crop: ``(x0, y0, x1, y1)`` in image pixels of the full-resolution crop; None when the image
        is shown whole
    """

    png: bytes
    title: str
    caption: str
    crop: tuple[int, int, int, int] | None


def preview_path(output: str, image: str | None = None) -> str:
    """Where the preview of the mask ``output`` goes: beside it (``masks/a.zarr`` ->
    ``masks/a.preview.png``), or for a mask inside its ``image`` (``IMAGE.zarr/labels/NAME``)
    beside the image (``IMAGE.NAME.preview.png``), so that nothing but the mask enters the image."""
    if image is not None:
        name = str(output).rstrip("/").rsplit("/", 1)[-1]
        return f"{str(image).rstrip('/').removesuffix('.zarr')}.{name}.preview.png"
    base = str(output).rstrip("/")
    if base.endswith(".zarr"):
        base = base[: -len(".zarr")]
    return f"{base}.preview.png"


def render_preview(
    input: str, output: str, *, channels_last: bool = False, max_side: int = MAX_SIDE
) -> bytes:
    """PNG bytes of :func:`build_preview`."""
    return build_preview(input, output, channels_last=channels_last, max_side=max_side).png


def build_preview(
    input: str,
    output: str,
    *,
    channels_last: bool = False,
    max_side: int = MAX_SIDE,
    crop_side: int = CROP_SIDE,
) -> Preview:
    """The preview of the mask at ``output`` over the image at ``input``.

    Parameters
    ----------
    input: the segmented image (Zarr / OME-Zarr, path or URL)
    output: the mask (OME-Zarr label image with levels ``0``, ``1``, ...)
    channels_last: the input array is ``(Y, X, C)``
    max_side: longest side of the overview; an image this small is shown whole
    crop_side: side of the full-resolution crop
    """
    import zarr

    from unet.io.source import open_image

    group = zarr.open_group(output, mode="r")
    attributes = dict(group.attrs)
    names, colours = class_names(attributes), label_colours(attributes)
    source = open_image(input, channels_last=channels_last)
    shape = tuple(int(side) for side in group["0"].shape[-2:])
    height, width = shape
    title = f"{mask_name(output)}: {size_label(width, height)}"
    if max(shape) <= max_side:
        panel, caption = _whole_image(group, source, colours)
        picture = compose(title, [(panel, caption)], _class_legend(names, colours))
        return Preview(png_bytes(picture), title, caption, None)

    cell = max(math.ceil(max(shape) / CELLS), MIN_CELL)
    fractions = _cell_fractions(group, shape, cell, len(names))
    x0, y0, x1, y1 = _busiest_window(fractions[1:].sum(axis=0), cell, shape, crop_side)
    scale = max_side / max(shape)
    panel_shape = (max(1, round(height * scale)), max(1, round(width * scale)))
    legend: list[Swatch | Ramp] = _class_legend(names, colours)
    if max(shape) <= SHRUNK_SIDE:
        overview = _shrunk(
            blend(
                display_image(source.read(slice(None), slice(None))),
                np.asarray(group["0"][...]).astype(np.uint8),
                colours,
            ),
            panel_shape,
        )
        overview_caption = (
            f"Whole image at {scale:.0%} of its size, the mask's colours over it; the box is the "
            "crop."
        )
    else:
        overview, full = _heat_overview(source, fractions, colours, shape, cell, panel_shape)
        overview_caption = (
            f"Whole image: each cell of {size_label(cell, cell)} is coloured by the share of its "
            f"pixels in each class, full colour at {full:.0%} or more; the box is the crop."
        )
        legend.append(_share_ramp(colours, full))
    outline(overview, [round(v * scale) for v in (x0, y0, x1, y1)])

    labels = np.asarray(group["0"][y0:y1, x0:x1]).astype(np.uint8)
    crop = blend(display_image(source.read(slice(y0, y1), slice(x0, x1))), labels, colours)
    shown = [
        n for n, share in zip(names[1:], fractions[1:].max(axis=(1, 2)), strict=False) if share
    ]
    where = f"the region richest in {_joined(shown)}" if shown else "the centre (no objects)"
    crop_caption = (
        f"Full resolution, {size_label(x1 - x0, y1 - y0)} at x {x0}-{x1}, y {y0}-{y1}, "
        f"{where}: the mask's colours over the image."
    )
    picture = compose(title, [(overview, overview_caption), (crop, crop_caption)], legend)
    caption = f"{overview_caption} {crop_caption}"
    return Preview(png_bytes(picture), title, caption, (x0, y0, x1, y1))


def _whole_image(
    group: Any, source: Any, colours: Sequence[Sequence[int]]
) -> tuple[np.ndarray, str]:
    """The panel of an image that fits the overview: all of it at full resolution, a small one
    enlarged (each pixel a square of pixels, so that it can be seen), and its caption."""
    height, width = group["0"].shape[-2:]
    labels = np.asarray(group["0"][...]).astype(np.uint8)
    panel = blend(display_image(source.read(slice(None), slice(None))), labels, colours)
    zoom = max(1, SMALL_SIDE // max(height, width))
    panel = np.repeat(np.repeat(panel, zoom, axis=0), zoom, axis=1)
    enlarged = f" enlarged {zoom} times" if zoom > 1 else ""
    return panel, f"The whole image at full resolution{enlarged}, the mask's colours over it."


def _heat_overview(
    source: Any,
    fractions: np.ndarray,
    colours: Sequence[Sequence[int]],
    shape: tuple[int, int],
    cell: int,
    panel_shape: tuple[int, int],
) -> tuple[np.ndarray, float]:
    """The heat map of ``fractions`` (per cell of ``cell`` image pixels) at ``panel_shape``,
    over the image's mean brightness per cell, and the share shown in full colour."""
    cells = fractions.shape[1:]
    full = full_share(fractions[1:].sum(axis=0))
    # The image under the map is as coarse as the map: its mean brightness per cell, so that
    # texture finer than a cell (single nuclei, noise) does not hide the colours.
    low, factor = source.low_resolution(max(panel_shape))
    grey = _luminance(display_image(np.asarray(low)))
    brightness = cell_means(grey, *_cells_of(grey.shape, factor, cell, cells), cells)
    rows, cols = _cells_of(panel_shape, max(shape) / max(panel_shape), cell, cells)
    overview = heat_map(brightness[rows][:, cols], fractions[:, rows][:, :, cols], colours, full)
    return overview, full


def _shrunk(rgb: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``rgb`` (h, w, 3) resized to ``shape`` by area averaging."""
    from PIL import Image

    resized = Image.fromarray(rgb).resize((shape[1], shape[0]), Image.Resampling.BOX)
    return np.asarray(resized).copy()


def mask_name(output: str) -> str:
    """``masks/a.zarr`` -> ``a``; a mask inside its image, ``IMAGE.zarr/labels/NAME`` ->
    ``IMAGE/labels/NAME``."""
    parts = str(output).rstrip("/").split("/")
    name = parts[-1].removesuffix(".zarr")
    if len(parts) >= 3 and parts[-2] == "labels":
        return f"{parts[-3].removesuffix('.zarr')}/labels/{name}"
    return name


def label_colours(attributes: dict) -> list[tuple[int, int, int]]:
    """RGB per label value from OME ``image-label`` ``colors``; default colours where missing."""
    from unet.network.checkpoint import default_colours

    colours = default_colours(256)
    for entry in attributes.get("ome", {}).get("image-label", {}).get("colors", []):
        value, rgba = entry.get("label-value"), entry.get("rgba")
        if isinstance(value, int) and 0 <= value < 256 and rgba and len(rgba) >= 3:
            colours[value] = (int(rgba[0]), int(rgba[1]), int(rgba[2]))
    return colours


def class_names(attributes: dict) -> list[str]:
    """One name per label value, from OME ``image-label`` ``properties`` (``class``); label
    values without a name are ``class N``. Two classes at least (0 is background)."""
    named: dict[int, str] = {}
    for entry in attributes.get("ome", {}).get("image-label", {}).get("properties", []):
        value, name = entry.get("label-value"), entry.get("class")
        if isinstance(value, int) and 0 <= value < 256 and isinstance(name, str):
            named[value] = name
    count = max(2, 1 + max(named, default=0))
    return [
        named.get(value, "background" if value == 0 else f"class {value}") for value in range(count)
    ]


def mask_overview(group: Any, max_side: int) -> np.ndarray:
    """uint8 (h, w) labels from the finest pyramid level of ``group`` that fits ``max_side``.

    When even the coarsest level is larger, it is read with a stride.
    """
    array, step = _fitting_level(group, max_side)
    index = (0,) * (array.ndim - 2) + (slice(None, None, step), slice(None, None, step))
    return np.asarray(array[index]).astype(np.uint8)


def cell_fractions(
    labels: np.ndarray,
    row_cells: np.ndarray,
    col_cells: np.ndarray,
    cells: tuple[int, int],
    classes: int,
) -> np.ndarray:
    """float64 (classes, cy, cx): per cell, the share of its labelled pixels in each class.

    Parameters
    ----------
    labels: uint8 (h, w) label values; values ``>= classes`` (no data) count in no share
    row_cells, col_cells: int (h,) and (w,): the cell row of each row of ``labels``, the cell
        column of each column
    cells: ``(cy, cx)``, the number of cell rows and columns
    classes: the number of classes

    A cell without labelled pixels has every share 0.
    """
    return _shares(_cell_counts(labels, row_cells, col_cells, cells, classes))


def full_share(foreground: np.ndarray) -> float:
    """The foreground share shown in full colour: the smallest of :data:`SCALE_STEPS` at or
    above the 99th percentile of the cells' shares (one dense cell does not pale the others)."""
    top = float(np.percentile(foreground, 99)) if foreground.size else 0.0
    return next((step for step in SCALE_STEPS if step >= top), 1.0)


def cell_means(
    values: np.ndarray,
    row_cells: np.ndarray,
    col_cells: np.ndarray,
    cells: tuple[int, int],
) -> np.ndarray:
    """float64 (cy, cx): the mean of ``values`` (h, w) in each cell (0 where a cell has none);
    ``row_cells``, ``col_cells`` as in :func:`cell_fractions`."""
    index = (row_cells[:, None] * cells[1] + col_cells[None, :]).ravel()
    sums = np.bincount(index, weights=values.ravel(), minlength=cells[0] * cells[1])
    counts = np.bincount(index, minlength=cells[0] * cells[1])
    means = np.divide(sums, counts, out=np.zeros(sums.shape), where=counts > 0)
    return means.reshape(cells)


def heat_map(
    brightness: np.ndarray,
    fractions: np.ndarray,
    colours: Sequence[Sequence[int]],
    full: float,
    alpha: float = HEAT_ALPHA,
) -> np.ndarray:
    """uint8 (h, w, 3): grey ``brightness``, dimmed, each pixel tinted by the class shares of
    its cell.

    Parameters
    ----------
    brightness: (h, w) grey values 0..255
    fractions: (classes, h, w) shares per pixel (of the pixel's cell); class 0, background,
        is not coloured
    colours: RGB per class
    full: the foreground share at and above which a cell has full colour (opacity ``alpha``)

    The tint is the mix of the foreground classes' colours weighted by their shares; its
    opacity grows with the foreground share, up to ``alpha`` at ``full``.
    """
    grey = brightness.astype(np.float32) * DIMMED
    foreground = fractions[1:].sum(axis=0)
    palette = np.asarray(colours, np.float32).reshape(-1, 3)[1 : fractions.shape[0]]
    mix = (
        np.einsum("khw,kc->hwc", fractions[1:], palette) / np.maximum(foreground, 1e-12)[..., None]
    )
    weight = (alpha * np.clip(foreground / full, 0.0, 1.0))[..., None]
    return np.round(grey[..., None] * (1 - weight) + mix * weight).astype(np.uint8)


def display_image(image: np.ndarray) -> np.ndarray:
    """uint8 (h, w, 3) of a (C, h, w) image: RGB when C == 3, else the first channel in grey.

    Each channel is stretched between its 1st and 99th percentile, so 16-bit or float images
    show as well as 8-bit ones.
    """
    channels = image[:3] if image.shape[0] == 3 else image[:1]
    planes = []
    for plane in channels.astype(np.float32):
        finite = plane[np.isfinite(plane)]
        low, high = np.percentile(finite, (1, 99)) if finite.size else (0.0, 1.0)
        scale = 255.0 / (high - low) if high > low else 0.0
        planes.append(np.clip(np.nan_to_num((plane - low) * scale), 0, 255))
    rgb = np.stack(planes * 3 if len(planes) == 1 else planes, axis=-1)
    return rgb.astype(np.uint8)


def resize_nearest(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``image`` (h, w, ...) resampled to ``shape`` by nearest neighbour (pixel centres)."""
    rows = ((np.arange(shape[0]) + 0.5) * image.shape[0] / shape[0]).astype(int)
    cols = ((np.arange(shape[1]) + 0.5) * image.shape[1] / shape[1]).astype(int)
    return image[np.minimum(rows, image.shape[0] - 1)][:, np.minimum(cols, image.shape[1] - 1)]


def blend(
    image: np.ndarray, labels: np.ndarray, colours: Sequence[Sequence[int]], alpha: float = ALPHA
) -> np.ndarray:
    """uint8 (h, w, 3): ``image`` with each non-zero label's colour laid over at ``alpha``.

    Label 0 (background) stays uncoloured; ``colours[k]`` is label k's RGB.
    """
    palette = np.zeros((256, 3), np.float32)
    known = np.asarray(colours, np.float32).reshape(-1, 3)[:256]
    palette[: len(known)] = known
    overlay = palette[labels]
    weight = np.where(labels > 0, alpha, 0.0)[..., None]
    return np.round(image * (1 - weight) + overlay * weight).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to a local path or an fsspec URL.

    A local file is written beside ``path`` and renamed over it: a symbolic link at ``path``
    is replaced, never written through (it could lead into the input), and a failed write
    leaves no half-written PNG.
    """
    if "://" in path:
        import fsspec

        with fsspec.open(path, "wb") as file:
            file.write(data)
        return
    import os
    import uuid

    target = Path(path)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        partial.write_bytes(data)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


# Reading -----------------------------------------------------------------------------------


def _fitting_level(group: Any, max_side: int) -> tuple[Any, int]:
    """The finest level of ``group`` whose sides fit ``max_side`` (else the coarsest), and the
    stride that makes the coarsest fit."""
    levels = sorted((name for name in group.array_keys() if name.isdigit()), key=int)
    if not levels:
        raise ValueError(f"{group.store} has no pyramid levels (arrays '0', '1', ...)")
    chosen = next((n for n in levels if max(group[n].shape[-2:]) <= max_side), levels[-1])
    array = group[chosen]
    return array, -(-max(array.shape[-2:]) // max_side)


def _cell_fractions(group: Any, shape: tuple[int, int], cell: int, classes: int) -> np.ndarray:
    """float64 (classes, cy, cx) shares per cell of ``cell`` image pixels, counted on a level of
    at most ``FRACTION_SIDE`` a side, one band of its chunk rows at a time."""
    height, width = shape
    array, step = _fitting_level(group, FRACTION_SIDE)
    level_height, level_width = array.shape[-2:]
    # A level pixel stands for (height / level_height) image rows: the cell of its centre.
    rows = (np.arange(0, level_height, step) + 0.5) * (height / level_height) // cell
    cols = (np.arange(0, level_width, step) + 0.5) * (width / level_width) // cell
    cells = (-(-height // cell), -(-width // cell))
    rows = np.minimum(rows.astype(int), cells[0] - 1)
    cols = np.minimum(cols.astype(int), cells[1] - 1)
    counts = np.zeros((classes, *cells), np.int64)
    band = step * max(1, int(array.chunks[-2]) // step)
    for start in range(0, level_height, band):
        block = np.asarray(array[start : start + band : step, ::step]).astype(np.uint8)
        first = start // step
        counts += _cell_counts(block, rows[first : first + len(block)], cols, cells, classes)
    return _shares(counts)


def _shares(counts: np.ndarray) -> np.ndarray:
    """float64 (classes, cy, cx): ``counts`` over each cell's total; 0 in a cell of none."""
    total = counts.sum(axis=0, keepdims=True)
    return np.divide(counts, total, out=np.zeros(counts.shape), where=total > 0)


def _cell_counts(
    labels: np.ndarray,
    row_cells: np.ndarray,
    col_cells: np.ndarray,
    cells: tuple[int, int],
    classes: int,
) -> np.ndarray:
    """int64 (classes, cy, cx): pixels of each class per cell (see :func:`cell_fractions`)."""
    cell_index = row_cells[:, None] * cells[1] + col_cells[None, :]
    labelled = labels < classes
    flat = cell_index[labelled] * classes + labels[labelled]
    counts = np.bincount(flat, minlength=cells[0] * cells[1] * classes)
    return counts.reshape(cells[0], cells[1], classes).transpose(2, 0, 1)


def _cells_of(
    shape: tuple[int, int], factor: float, cell: int, cells: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The cell row of each row and the cell column of each column of an array of ``shape``
    whose pixels stand for ``factor`` image pixels (each pixel counts where its centre is)."""
    rows = ((np.arange(shape[0]) + 0.5) * factor // cell).astype(int)
    cols = ((np.arange(shape[1]) + 0.5) * factor // cell).astype(int)
    return np.minimum(rows, cells[0] - 1), np.minimum(cols, cells[1] - 1)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _busiest_window(
    foreground: np.ndarray, cell: int, shape: tuple[int, int], side: int
) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)``: a window of ``side`` pixels (the image's sides at most) on the cell
    grid holding the largest foreground share, the image's centre when there is none."""
    height, width = shape
    window_height, window_width = min(side, height), min(side, width)
    if not foreground.any():
        y0, x0 = (height - window_height) // 2, (width - window_width) // 2
        return x0, y0, x0 + window_width, y0 + window_height
    # Sum of the shares of the cells a window covers, for a window at each cell: box sums of
    # the cumulative table.
    span = (max(1, window_height // cell), max(1, window_width // cell))
    table = np.pad(foreground, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    rows, cols = foreground.shape
    top = np.arange(rows)[:, None]
    left = np.arange(cols)[None, :]
    bottom, right = np.minimum(top + span[0], rows), np.minimum(left + span[1], cols)
    sums = table[bottom, right] - table[top, right] - table[bottom, left] + table[top, left]
    best_row, best_col = np.unravel_index(int(np.argmax(sums)), sums.shape)
    y0 = min(int(best_row) * cell, height - window_height)
    x0 = min(int(best_col) * cell, width - window_width)
    return x0, y0, x0 + window_width, y0 + window_height


def _class_legend(names: Sequence[str], colours: Sequence[Sequence[int]]) -> list[Swatch]:
    """A swatch per class; background is not coloured."""
    swatches = [Swatch(f"{names[0]} (not coloured)", None)]
    return swatches + [
        Swatch(name, tuple(colours[value])) for value, name in enumerate(names) if value
    ]


def _share_ramp(colours: Sequence[Sequence[int]], full: float) -> Ramp:
    """The heat map's scale for the first foreground class, over mid grey, drawn by
    :func:`heat_map` itself so that it matches the map."""
    shares = np.linspace(0.0, full, RAMP_WIDTH)[None, :]
    fractions = np.stack([1.0 - shares, shares])
    ramp = heat_map(np.full(shares.shape, 128.0), fractions, colours[:2], full)[0]
    return Ramp(ramp, "share of a cell in a class: 0%", f"{full:.0%} or more")


def _joined(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"
