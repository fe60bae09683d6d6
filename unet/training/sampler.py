"""Where training tiles come from: random windows drawn where there are annotations, cut as
inference cuts them (mirror-padded at the image border), then augmented."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from unet.tiling import Geometry, reflect_index
from unet.training.augment import augment

#: Side in pixels of the cells in which annotated pixels are counted for drawing tiles (a slide
#: too large for 2**22 such cells uses the smallest power-of-two multiple that fits).
CELL = 16


class TrainingImage(Protocol):
    """What the sampler needs of a training image, in memory or read from a slide.

    ``cells`` holds the annotated pixels (not the ignore label) of each ``cell`` x ``cell``
    square, integer ``(ceil(H / cell), ceil(W / cell))``.
    """

    name: str
    shape: tuple[int, int]
    cell: int
    cells: np.ndarray

    def window(
        self, rows: np.ndarray, cols: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


def cell_counts(annotated: np.ndarray, cell: int = CELL) -> np.ndarray:
    """int64 (ceil(h / cell), ceil(w / cell)) counts of the true pixels of a bool (h, w) array."""
    height, width = annotated.shape
    rows, cols = -(-height // cell), -(-width // cell)
    padded = np.zeros((rows * cell, cols * cell), np.int64)
    padded[:height, :width] = annotated
    return padded.reshape(rows, cell, cols, cell).sum(axis=(1, 3))


class TileSampler:
    """Random training tiles: input windows of the mirror-padded image and the classes and
    weights of their output-size centres.

    A tile is drawn around an annotated pixel: the pixel is chosen uniformly among all
    annotated pixels of all images (to the resolution of the images' cells: a cell by its
    count, then a pixel of it), then the output window uniformly among the positions inside
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
        # Cumulative counts, so that drawing a cell costs a binary search, not a pass.
        self.cumulative = {
            id(item): np.cumsum(item.cells.ravel(), dtype=np.int64) for item in images
        }
        totals = np.array([self.cumulative[id(item)][-1] for item in images], np.float64)
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
        cumulative = self.cumulative.get(id(item))
        if cumulative is None:
            cumulative = np.cumsum(item.cells.ravel(), dtype=np.int64)
        cell = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
        cell_row, cell_col = divmod(min(cell, cumulative.size - 1), item.cells.shape[1])
        origin = []
        for index, length in ((cell_row, item.shape[0]), (cell_col, item.shape[1])):
            pixel = min(index * item.cell + int(rng.integers(item.cell)), length - 1)
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
