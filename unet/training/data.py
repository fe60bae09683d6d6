"""Training data: image/mask pairs read and checked, weight maps, the per-channel
normalization, and random augmented tiles cut as inference cuts them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from unet.errors import (
    InputNotFound,
    InvalidImage,
    InvalidParameter,
    UnsupportedInput,
)
from unet.io.files import SUFFIXES, file_stem, read_array
from unet.tiling import Geometry, reflect_index
from unet.training.augment import augment
from unet.training.weightmap import weight_map

if TYPE_CHECKING:
    pass


@dataclass
class LabelledImage:
    """One training image in memory.

    Attributes
    ----------
    name: file stem
    image: float32 (C, H, W), raw values (not normalized)
    classes: int64 (H, W) class index per pixel
    weights: float32 (H, W) loss weights (:func:`unet.training.weightmap.weight_map`)
    """

    name: str
    image: np.ndarray
    classes: np.ndarray
    weights: np.ndarray


class TileSampler:
    """Random training tiles: input windows of the mirror-padded image and the classes and
    weights of their output-size centres.

    An image is chosen with probability proportional to its area, the output window uniformly
    among positions inside the image (or at the origin for images smaller than it). Input
    windows reach ``halo`` pixels beyond it, mirrored at the image border with numpy "reflect",
    as :func:`unet.predict.predict_array` pads.
    """

    def __init__(
        self,
        images: list[LabelledImage],
        geometry: Geometry,
        tile_size: int,
        rng: np.random.Generator,
        elastic: bool = True,
    ) -> None:
        self.images = images
        self.halo = geometry.halo
        self.tile_size = tile_size
        self.output_size = geometry.output_size(tile_size)
        self.rng = rng
        self.elastic = elastic
        areas = np.array([item.classes.size for item in images], np.float64)
        self.probabilities = areas / areas.sum()

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """float32 (N, C, T, T) images, int64 (N, O, O) classes, float32 (N, O, O) weights."""
        samples = [self.sample() for _ in range(size)]
        return tuple(np.stack(parts) for parts in zip(*samples, strict=True))

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One augmented tile: (C, T, T) image, (O, O) classes and weights."""
        item = self.images[self.rng.choice(len(self.images), p=self.probabilities)]
        height, width = item.classes.shape
        top = int(self.rng.integers(max(height - self.output_size, 0) + 1))
        left = int(self.rng.integers(max(width - self.output_size, 0) + 1))
        image, classes, weights = augment(
            *self.window(item, top, left), rng=self.rng, elastic=self.elastic
        )
        centre = slice(self.halo, self.halo + self.output_size)
        return image, classes[centre, centre], weights[centre, centre]

    def window(
        self, item: LabelledImage, top: int, left: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The input window whose output starts at image pixel (top, left): image, classes and
        weights of the image mirror-padded by ``halo``, each (.., T, T)."""
        height, width = item.classes.shape
        rows = reflect_index(top - self.halo, top - self.halo + self.tile_size, height)[:, None]
        cols = reflect_index(left - self.halo, left - self.halo + self.tile_size, width)[None]
        return item.image[:, rows, cols], item.classes[rows, cols], item.weights[rows, cols]


def load_dataset(
    data_dir: str | os.PathLike[str],
    *,
    class_map: Mapping[int, int] | None = None,
    w0: float = 10.0,
    sigma: float = 5.0,
) -> list[LabelledImage]:
    """Read and check every image/mask pair of a data directory and compute its weight map.

    Masks must be integer (or boolean) (Y, X) labels, 0 = background, of the image's size.
    Without ``class_map`` a mask's non-zero values are object ids of class 1; with it they are
    mapped to classes and objects are the connected regions of one value.

    Returns
    -------
    one :class:`LabelledImage` per pair, sorted by name
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise InputNotFound(f"data directory {root} does not exist")
    images, masks = _listing(root / "images"), _listing(root / "masks")
    missing_masks = sorted(images.keys() - masks.keys())
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
    dataset = [
        _labelled(name, images[name], masks[name], class_map, w0, sigma) for name in sorted(images)
    ]
    channels = {item.image.shape[0] for item in dataset}
    if len(channels) > 1:
        raise InvalidImage(
            f"{root}/images mixes images of {sorted(channels)} channels: use one channel count"
        )
    if not any(item.classes.any() for item in dataset):
        raise InvalidImage(f"every mask in {root}/masks is empty (all 0): nothing to learn")
    return dataset


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


def normalization(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (float32 (C,)) over all pixels of ``images`` ((C, H, W) each);
    a constant channel gets std 1."""
    total = sum(image.reshape(image.shape[0], -1).sum(axis=1, dtype=np.float64) for image in images)
    count = sum(image[0].size for image in images)
    mean = total / count
    squares = sum(
        ((image.reshape(image.shape[0], -1) - mean[:, None]) ** 2).sum(axis=1) for image in images
    )
    std = np.sqrt(squares / count)
    std[std == 0] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


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
    name: str,
    image_path: Path,
    mask_path: Path,
    class_map: Mapping[int, int] | None,
    w0: float,
    sigma: float,
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
            f"{mask_path} is {mask.shape[0]}x{mask.shape[1]} but its image is "
            f"{image.shape[1]}x{image.shape[2]}: masks must match their images"
        )
    mask = mask.astype(np.int64)
    if mask.min() < 0:
        raise InvalidImage(f"{mask_path} holds negative labels: use 0 for background, >0 objects")
    if class_map is None:
        classes, objects = (mask > 0).astype(np.int64), mask
    else:
        classes = _apply_class_map(mask, class_map, mask_path)
        from skimage.measure import label

        objects = label(np.where(classes > 0, mask, 0), background=0, connectivity=1)
    return LabelledImage(
        name=name,
        image=image.astype(np.float32),
        classes=classes,
        weights=weight_map(objects, classes, w0=w0, sigma=sigma),
    )


def _apply_class_map(mask: np.ndarray, class_map: Mapping[int, int], path: Path) -> np.ndarray:
    values = np.unique(mask)
    unmapped = [int(v) for v in values if v != 0 and int(v) not in class_map]
    if unmapped:
        raise InvalidImage(
            f"{path} holds values {_names([str(v) for v in unmapped])} that the class map does "
            "not assign: add them to the class map"
        )
    lookup = np.zeros(int(values.max()) + 1, np.int64)
    for value, cls in class_map.items():
        if value < lookup.size:
            lookup[value] = cls
    return lookup[mask]


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
