"""Whole slides as training data: a Zarr / OME-Zarr image and its mask (a separate Zarr array or
an OME-NGFF label image ``labels/<name>`` inside the image) read window by window, never whole.

Opening a slide scans its mask once, block by block, counting the annotated pixels of each
sampling cell and of each class; tiles are then drawn where there are annotations. The weight
map is computed per window: the window's mask is read with :func:`unet.training.weightmap.reach`
pixels of context on every side, which makes the border term exact up to
:data:`unet.training.weightmap.NEGLIGIBLE` for instance masks; ``w_c`` uses the slide's class
frequencies. With a class map, objects are the connected regions of one value within the
context, so an object that is connected only outside it counts as two there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from unet.errors import InputNotFound, InvalidImage, InvalidParameter
from unet.sizes import shape_label
from unet.training.labels import LabelRules
from unet.training.sampler import CELL, cell_counts
from unet.training.statistics import PixelStatistics
from unet.training.weightmap import IGNORED, class_weights, reach, weight_map

if TYPE_CHECKING:
    from unet.io.source import ImageSource

#: Side of the blocks read when a slide's mask and image are scanned (a multiple of any cell).
SCAN_BLOCK = 2048
#: Sampling cells per slide at most; larger slides get larger cells.
MAX_CELLS = 2**22


@dataclass
class SlideImage:
    """One training image read from Zarr region by region.

    Attributes
    ----------
    name: the image's name
    image, mask: the opened sources, (C, H, W) and (1, H, W)
    rules: how mask values become classes
    w0, sigma: the weight map's border term
    cell: side of the sampling cells: ``CELL``, or a power-of-two multiple for huge slides
    cells: int32 annotated pixels per cell
    class_counts: int64 annotated pixels per class
    weights_per_class: ``w_c`` of every class, from the slide's class counts
    mean, std: float32 (C,) normalization applied by :meth:`window`, set by the caller
    """

    name: str
    image: ImageSource
    mask: ImageSource
    rules: LabelRules
    w0: float
    sigma: float
    cell: int
    cells: np.ndarray = field(repr=False)
    class_counts: np.ndarray = field(repr=False)
    weights_per_class: np.ndarray | None = field(default=None, repr=False)
    mean: np.ndarray | None = field(default=None, repr=False)
    std: np.ndarray | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape[1], self.image.shape[2]

    @property
    def channels(self) -> int:
        return self.image.shape[0]

    @property
    def dtype(self) -> str:
        return self.image.dtype

    def window(
        self, rows: np.ndarray, cols: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Normalized image (float32 (C, h, w)), classes (int64) and weights (float32 (h, w)) at
        the image pixels ``rows`` x ``cols`` (int arrays, e.g. reflected indices)."""
        top, bottom = int(rows.min()), int(rows.max()) + 1
        left, right = int(cols.min()), int(cols.max()) + 1
        image = self.image.read(slice(top, bottom), slice(left, right)).astype(np.float32)
        image = image[:, rows[:, None] - top, cols[None, :] - left]
        if self.mean is not None:
            image = (image - self.mean[:, None, None]) / self.std[:, None, None]
        margin = reach(self.w0, self.sigma)
        height, width = self.shape
        y0, x0 = max(top - margin, 0), max(left - margin, 0)
        y1, x1 = min(bottom + margin, height), min(right + margin, width)
        mask = self.mask.read(slice(y0, y1), slice(x0, x1))[0]
        classes, objects = self.rules.classes(mask, f"{self.mask.url} {self.mask.array_path}")
        weights = weight_map(
            objects, classes, w0=self.w0, sigma=self.sigma, weights_per_class=self.weights_per_class
        )
        index = (rows[:, None] - y0, cols[None, :] - x0)
        return image.astype(np.float32), classes[index], weights[index]

    def statistics(self) -> PixelStatistics:
        """Mean, std and range of the image's annotated pixels, read block by block where the
        scan found annotations."""
        stats = PixelStatistics(self.channels)
        for rows, cols in _blocks(self.shape):
            if not self.cells[_cells_of(rows, cols, self.cell)].any():
                continue
            classes, _ = self.rules.classes(self.mask.read(rows, cols)[0], self.name)
            stats.add(self.image.read(rows, cols), classes != IGNORED)
        return stats


def open_slide(
    name: str,
    image_path: str | os.PathLike[str],
    mask_path: str | os.PathLike[str] | None,
    rules: LabelRules,
    *,
    label_name: str | None = None,
    w0: float = 10.0,
    sigma: float = 5.0,
) -> SlideImage:
    """Open a Zarr image and its mask and scan the mask.

    Parameters
    ----------
    mask_path: a Zarr array or OME-Zarr label image; None: the label image ``labels/<name>``
        inside ``image_path`` (``label_name``, or the only one listed there)

    Raises
    ------
    InputNotFound, UnsupportedInput, InvalidImage
        Missing or unreadable stores, a mask of another size or with channels, masks that are
        not integer labels, a mask of an unfinished ``unet segment`` run.
    """
    from unet.io.complete import check_finished
    from unet.io.source import open_image

    image = open_image(image_path)
    if image.dtype == "bool":
        raise InvalidImage(f"{image_path} is boolean: images must hold intensities")
    if mask_path is None:
        mask_path = inner_labels(Path(image_path), label_name)
    mask = open_image(mask_path)
    check_finished(mask.url, reader="train on it")
    where = str(mask_path)
    if mask.shape[0] != 1:
        raise InvalidImage(f"{where} has {mask.shape[0]} channels: a mask is one (Y, X) plane")
    if np.dtype(mask.dtype).kind not in "biu":
        raise InvalidImage(
            f"{where} has dtype {mask.dtype}: masks must hold integer labels (0 = background)"
        )
    if mask.shape[1:] != image.shape[1:]:
        raise InvalidImage(
            f"{where} is {shape_label(mask.shape)} but its image is "
            f"{shape_label(image.shape)}: masks must match their images"
        )
    height, width = image.shape[1:]
    cell = CELL
    while -(-height // cell) * -(-width // cell) > MAX_CELLS:
        cell *= 2
    cells = np.zeros((-(-height // cell), -(-width // cell)), np.int32)
    class_counts = np.zeros(0, np.int64)
    for rows, cols in _blocks((height, width)):
        classes, _ = rules.classes(mask.read(rows, cols)[0], where)
        annotated = classes != IGNORED
        cells[_cells_of(rows, cols, cell)] = cell_counts(annotated, cell)
        counts = np.bincount(classes[annotated].ravel())
        size = max(class_counts.size, counts.size)
        class_counts = np.pad(class_counts, (0, size - class_counts.size)) + np.pad(
            counts, (0, size - counts.size)
        )
    return SlideImage(
        name=name,
        image=image,
        mask=mask,
        rules=rules,
        w0=w0,
        sigma=sigma,
        cell=cell,
        cells=cells,
        class_counts=class_counts,
        weights_per_class=class_weights(class_counts),
    )


def inner_labels(image_path: Path, label_name: str | None) -> Path:
    """The OME-NGFF label image ``labels/<name>`` of a Zarr image: ``label_name``, or the only
    one the ``labels`` group lists.

    Raises
    ------
    InputNotFound
        The image has no ``labels`` group, or not the one named.
    InvalidParameter
        Several label images and no ``label_name``.
    """
    import json

    group = image_path / "labels"
    listed: list[str] = []
    for metadata, key in (("zarr.json", "attributes"), (".zattrs", None)):
        if (group / metadata).is_file():
            attributes = json.loads((group / metadata).read_text())
            attributes = attributes.get(key, {}) if key else attributes
            listed = list(attributes.get("ome", attributes).get("labels", []))
            break
    if not listed:
        listed = sorted(p.name for p in group.iterdir() if p.is_dir()) if group.is_dir() else []
    if label_name is not None:
        if label_name not in listed:
            raise InputNotFound(
                f"{image_path} has no label image {label_name!r} (it has: "
                f"{', '.join(listed) or 'none'}): check --label-name"
            )
        return group / label_name
    if not listed:
        raise InputNotFound(
            f"{image_path} has no mask: put one in masks/ with the same name, or a label image "
            "in its labels/ group"
        )
    if len(listed) > 1:
        raise InvalidParameter(
            f"{image_path} holds label images {', '.join(listed)}: choose one with --label-name"
        )
    return group / listed[0]


def _blocks(shape: tuple[int, int]) -> list[tuple[slice, slice]]:
    height, width = shape
    return [
        (slice(y, min(y + SCAN_BLOCK, height)), slice(x, min(x + SCAN_BLOCK, width)))
        for y in range(0, height, SCAN_BLOCK)
        for x in range(0, width, SCAN_BLOCK)
    ]


def _cells_of(rows: slice, cols: slice, cell: int) -> tuple[slice, slice]:
    """The sampling cells of a block (blocks start on multiples of ``cell``)."""
    return (
        slice(rows.start // cell, -(-rows.stop // cell)),
        slice(cols.start // cell, -(-cols.stop // cell)),
    )
