"""Training data: image/mask pairs found and checked; images read whole (TIFF, PNG) with their
weight maps, or opened as slides read window by window (Zarr, :mod:`unet.training.slides`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from unet.errors import (
    InputNotFound,
    InvalidImage,
    InvalidParameter,
    UnsupportedInput,
)
from unet.io.files import SUFFIXES, file_stem, read_array
from unet.io.folder import is_zarr_store
from unet.sizes import shape_label
from unet.training.labels import LabelRules
from unet.training.sampler import CELL, cell_counts
from unet.training.slides import SlideImage, open_slide
from unet.training.statistics import PixelStatistics
from unet.training.weightmap import IGNORED, weight_map


@dataclass
class LabelledImage:
    """One training image read whole into memory (TIFF, PNG).

    Attributes
    ----------
    name: file stem
    image: float32 (C, H, W), raw values (not normalized)
    classes: int64 (H, W) class index per pixel, :data:`IGNORED` where unannotated
    weights: float32 (H, W) loss weights (:func:`unet.training.weightmap.weight_map`)
    dtype: numpy dtype name of the stored image
    mean, std: float32 (C,) normalization applied by :meth:`window`, set by the caller
    """

    name: str
    image: np.ndarray
    classes: np.ndarray
    weights: np.ndarray
    dtype: str = "float32"
    mean: np.ndarray | None = field(default=None, repr=False)
    std: np.ndarray | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return self.classes.shape

    @property
    def channels(self) -> int:
        return self.image.shape[0]

    cell: ClassVar[int] = CELL

    @property
    def cells(self) -> np.ndarray:
        """Annotated pixels per sampling cell (:func:`unet.training.sampler.cell_counts`)."""
        return cell_counts(self.classes != IGNORED)

    @property
    def class_counts(self) -> np.ndarray:
        """int64 annotated pixels per class."""
        return np.bincount(self.classes[self.classes != IGNORED].ravel())

    def window(
        self, rows: np.ndarray, cols: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Normalized image (float32 (C, h, w)), classes and weights at the pixels
        ``rows`` x ``cols`` (int arrays)."""
        rows, cols = rows[:, None], cols[None, :]
        return (
            self.normalize(self.image[:, rows, cols]),
            self.classes[rows, cols],
            self.weights[rows, cols],
        )

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """``(image - mean) / std`` per channel (unchanged before normalization is set)."""
        if self.mean is None:
            return image
        return ((image - self.mean[:, None, None]) / self.std[:, None, None]).astype(np.float32)

    def statistics(self) -> PixelStatistics:
        """Mean, std and range of the annotated pixels."""
        stats = PixelStatistics(self.channels)
        stats.add(self.image, self.classes != IGNORED, dtype=self.dtype)
        return stats


TrainingItem = LabelledImage | SlideImage


def load_dataset(
    data_dir: str | os.PathLike[str],
    *,
    class_map: Mapping[int, int] | None = None,
    ignore_label: int | None = None,
    label_name: str | None = None,
    w0: float = 10.0,
    sigma: float = 5.0,
) -> list[TrainingItem]:
    """Read and check every image/mask pair of a data directory.

    ``data_dir`` holds ``images/`` and ``masks/`` with matching names (TIFF, PNG or Zarr); a
    Zarr image may instead hold its mask as an OME-NGFF label image ``labels/<name>``, and
    ``data_dir`` may itself be such a Zarr image. TIFF and PNG pairs are read whole and get
    their weight map once; Zarr images are whole slides read window by window
    (:mod:`unet.training.slides`).

    Masks must be integer (or boolean) (Y, X) labels, 0 = background, of the image's size.
    Without ``class_map`` a mask's non-zero values are object ids of class 1; with it they are
    mapped to classes and objects are the connected regions of one value. Pixels holding
    ``ignore_label`` are unannotated (:class:`~unet.training.labels.LabelRules`).

    Returns
    -------
    one :class:`LabelledImage` or :class:`~unet.training.slides.SlideImage` per pair, sorted by
    name
    """
    root = Path(data_dir)
    rules = LabelRules(class_map=class_map, ignore_label=ignore_label)
    if is_zarr_store(root):
        items: list[TrainingItem] = [
            open_slide(
                file_stem(root), root, None, rules, label_name=label_name, w0=w0, sigma=sigma
            )
        ]
        return _checked(items, root)
    if not root.is_dir():
        raise InputNotFound(f"data directory {root} does not exist")
    images = _listing(root / "images")
    inner = {
        name for name, path in images.items() if is_zarr_store(path) and (path / "labels").is_dir()
    }
    masks = _listing(root / "masks") if (root / "masks").exists() or inner != images.keys() else {}
    inner -= masks.keys()
    missing_masks = sorted(images.keys() - masks.keys() - inner)
    missing_images = sorted(masks.keys() - images.keys())
    if missing_masks or missing_images:
        problems = []
        if missing_masks:
            problems.append(f"images without a mask: {_names(missing_masks)}")
        if missing_images:
            problems.append(f"masks without an image: {_names(missing_images)}")
        raise InvalidImage(
            f"{root}: {'; '.join(problems)}: give every image a mask with the same name"
        )
    items = []
    for name in sorted(images):
        if is_zarr_store(images[name]):
            items.append(
                open_slide(
                    name,
                    images[name],
                    masks.get(name),
                    rules,
                    label_name=label_name,
                    w0=w0,
                    sigma=sigma,
                )
            )
        else:
            items.append(_labelled(name, images[name], masks[name], rules, w0, sigma))
    return _checked(items, root / "images")


def _checked(items: list[TrainingItem], where: Path) -> list[TrainingItem]:
    channels = {item.channels for item in items}
    if len(channels) > 1:
        raise InvalidImage(f"{where} mixes images of {sorted(channels)} channels: use one count")
    if not any(item.class_counts[1:].any() for item in items):
        raise InvalidImage(
            f"no mask of {where} has an annotated object (all 0 or ignored): nothing to learn"
        )
    return items


def split(
    dataset: list[LabelledImage], val_fraction: float, seed: int
) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """Shuffle with ``seed`` and hold out ``round(n * val_fraction)`` images (at least one when
    ``val_fraction > 0`` and n >= 2, never all)."""
    count = len(dataset)
    held_out = 0
    if val_fraction > 0 and count >= 2:
        held_out = min(max(round(count * val_fraction), 1), count - 1)
    order = np.random.default_rng([seed, 1]).permutation(count)
    validation = sorted(order[:held_out].tolist())
    training = sorted(order[held_out:].tolist())
    return [dataset[i] for i in training], [dataset[i] for i in validation]


def parse_class_map(text: str) -> dict[int, int]:
    """``"1:1,2:1,3:2"`` -> ``{1: 1, 2: 1, 3: 2}`` (mask value -> class)."""
    mapping = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        value, sep, cls = entry.partition(":")
        try:
            if not sep:
                raise ValueError
            mapping[int(value)] = int(cls)
        except ValueError:
            raise InvalidParameter(
                f"class map entry {entry!r} is not VALUE:CLASS: write e.g. '1:1,2:1,3:2'"
            ) from None
    if not mapping:
        raise InvalidParameter(f"class map {text!r} is empty: write e.g. '1:1,2:1,3:2'")
    if min(mapping) < 0 or min(mapping.values()) < 0:
        raise InvalidParameter(f"class map {text!r} has negative values or classes")
    return mapping


def _labelled(
    name: str, image_path: Path, mask_path: Path, rules: LabelRules, w0: float, sigma: float
) -> LabelledImage:
    image = read_array(image_path)
    if image.dtype == bool:
        raise InvalidImage(f"{image_path} is boolean: images must hold intensities")
    mask = read_array(mask_path)
    if mask.shape[0] != 1:
        raise InvalidImage(f"{mask_path} has {mask.shape[0]} channels: a mask is one (Y, X) plane")
    mask = mask[0]
    if mask.dtype.kind not in "biu":
        raise InvalidImage(
            f"{mask_path} has dtype {mask.dtype}: masks must hold integer labels (0 = background)"
        )
    if mask.shape != image.shape[1:]:
        raise InvalidImage(
            f"{mask_path} is {shape_label(mask.shape)} but its image is "
            f"{shape_label(image.shape)}: masks must match their images"
        )
    classes, objects = rules.classes(mask, str(mask_path))
    return LabelledImage(
        name=name,
        image=image.astype(np.float32),
        classes=classes,
        weights=weight_map(objects, classes, w0=w0, sigma=sigma),
        dtype=image.dtype.name,
    )


def _listing(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputNotFound(
            f"{folder} does not exist: a data directory holds images/ and masks/ with matching "
            "file names"
        )
    entries: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if not any(path.name.lower().endswith(s) for s in SUFFIXES):
            raise UnsupportedInput(f"{path} is not TIFF, PNG or Zarr: convert or remove it")
        stem = file_stem(path)
        if stem in entries:
            raise InvalidImage(f"{entries[stem]} and {path} share the name {stem!r}: keep one")
        entries[stem] = path
    if not entries:
        raise InputNotFound(f"{folder} is empty: put TIFF, PNG or Zarr files there")
    return entries


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
