"""Where training tiles come from: random windows drawn where there are annotations, cut as
inference cuts them (mirror-padded at the image border), then augmented."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from unet.tiling import Geometry, reflect_index
from unet.training.augment import augment

#: Side in pixels of the cells in which annotated pixels are counted for drawing tiles.
CELL = 16


class TrainingImage(Protocol):
    """What the sampler needs of a training image, in memory or read from a slide.

    ``cells`` holds the annotated pixels (not the ignore label) of each ``CELL`` x ``CELL`` cell,
    int64 ``(ceil(H / CELL), ceil(W / CELL))``.
    """

    name: str
    shape: tuple[int, int]
    cells: np.ndarray

    def window(
        self, rows: np.ndarray, cols: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


def cell_counts(annotated: np.ndarray) -> np.ndarray:
    """int64 (ceil(h / CELL), ceil(w / CELL)) counts of the true pixels of a bool (h, w) array."""
    height, width = annotated.shape
    rows, cols = -(-height // CELL), -(-width // CELL)
    padded = np.zeros((rows * CELL, cols * CELL), np.int64)
    padded[:height, :width] = annotated
    return padded.reshape(rows, CELL, cols, CELL).sum(axis=(1, 3))


class TileSampler:
    """Random training tiles: input windows of the mirror-padded image and the classes and
    weights of their output-size centres.

    A tile is drawn around an annotated pixel: the pixel is chosen uniformly among all
    annotated pixels of all images (to the resolution of ``CELL`` x ``CELL`` cells: a cell by
    its count, then a pixel of it), then the output window uniformly among the positions inside
    the image that contain it (at the origin along an axis shorter than the window). Input
    windows reach ``halo`` pixels beyond it, mirrored at the image border with numpy "reflect",
    as :func:`unet.predict.predict_array` pads.
    """

    def __init__(
        self,
        images: list[TrainingImage],
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
        totals = np.array([item.cells.sum() for item in images], np.float64)
        self.probabilities = totals / totals.sum()

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """float32 (N, C, T, T) images, int64 (N, O, O) classes, float32 (N, O, O) weights."""
        samples = [self.sample() for _ in range(size)]
        return tuple(np.stack(parts) for parts in zip(*samples, strict=True))

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One augmented tile: (C, T, T) image, (O, O) classes and weights."""
        item = self.images[self.rng.choice(len(self.images), p=self.probabilities)]
        top, left = self.place(item, self.rng)
        image, classes, weights = augment(
            *self.window(item, top, left), rng=self.rng, elastic=self.elastic
        )
        centre = slice(self.halo, self.halo + self.output_size)
        return image, classes[centre, centre], weights[centre, centre]

    def place(self, item: TrainingImage, rng: np.random.Generator) -> tuple[int, int]:
        """The (top, left) of an output window around a random annotated pixel of ``item``."""
        counts = item.cells.ravel()
        cell = int(rng.choice(counts.size, p=counts / counts.sum()))
        cell_row, cell_col = divmod(cell, item.cells.shape[1])
        origin = []
        for index, length in ((cell_row, item.shape[0]), (cell_col, item.shape[1])):
            pixel = min(index * CELL + int(rng.integers(CELL)), length - 1)
            lowest = max(pixel - self.output_size + 1, 0)
            highest = max(min(pixel, length - self.output_size), 0)
            origin.append(int(rng.integers(lowest, max(highest, lowest) + 1)))
        return origin[0], origin[1]

    def window(
        self, item: TrainingImage, top: int, left: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The input window whose output starts at image pixel (top, left): normalized image,
        classes and weights of the image mirror-padded by ``halo``, each (.., T, T)."""
        height, width = item.shape
        rows = reflect_index(top - self.halo, top - self.halo + self.tile_size, height)
        cols = reflect_index(left - self.halo, left - self.halo + self.tile_size, width)
        return item.window(rows, cols)

    def fixed_windows(
        self, item: TrainingImage, count: int, seed: int | list[int]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """``count`` windows of ``item`` drawn as training draws them, without augmentation:
        (C, T, T) normalized images and (O, O) classes; the same for one ``seed``."""
        rng = np.random.default_rng(seed)
        centre = slice(self.halo, self.halo + self.output_size)
        windows = []
        for _ in range(count):
            image, classes, _ = self.window(item, *self.place(item, rng))
            windows.append((image, classes[centre, centre]))
        return windows
