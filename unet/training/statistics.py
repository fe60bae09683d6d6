"""Per-channel mean, std and range of training pixels, gathered block by block."""

from __future__ import annotations

import numpy as np


class PixelStatistics:
    """Running per-channel statistics of the annotated pixels of images added block by block
    (counts, means and squared deviations merged as Chan et al. do, so blocks may come in any
    size without losing precision).

    Parameters
    ----------
    channels: C
    """

    def __init__(self, channels: int) -> None:
        self.count = 0
        self.mean = np.zeros(channels, np.float64)
        self.squares = np.zeros(channels, np.float64)
        self.low = np.inf
        self.high = -np.inf
        self.dtypes: set[str] = set()

    def add(
        self, image: np.ndarray, annotated: np.ndarray | None = None, dtype: str | None = None
    ) -> None:
        """Add the pixels of a raw (C, h, w) block where the bool (h, w) ``annotated`` is set
        (all pixels when None); ``dtype`` names the stored dtype when ``image`` is a copy."""
        self.dtypes.add(dtype or np.dtype(image.dtype).name)
        pixels = image.reshape(image.shape[0], -1)
        if annotated is not None:
            pixels = pixels[:, annotated.ravel()]
        count = pixels.shape[1]
        if count == 0:
            return
        pixels = pixels.astype(np.float64)
        mean = pixels.mean(axis=1)
        squares = ((pixels - mean[:, None]) ** 2).sum(axis=1)
        total = self.count + count
        delta = mean - self.mean
        self.squares += squares + delta**2 * self.count * count / total
        self.mean += delta * count / total
        self.count = total
        self.low = min(self.low, float(pixels.min()))
        self.high = max(self.high, float(pixels.max()))

    def merge(self, other: PixelStatistics) -> None:
        """Add the pixels ``other`` has seen."""
        self.dtypes |= other.dtypes
        if other.count == 0:
            return
        total = self.count + other.count
        delta = other.mean - self.mean
        self.squares += other.squares + delta**2 * self.count * other.count / total
        self.mean += delta * other.count / total
        self.count = total
        self.low, self.high = min(self.low, other.low), max(self.high, other.high)

    def normalization(self) -> tuple[np.ndarray, np.ndarray]:
        """float32 (C,) mean and std; a constant channel gets std 1."""
        std = np.sqrt(self.squares / max(self.count, 1))
        std[std == 0] = 1.0
        return self.mean.astype(np.float32), std.astype(np.float32)

    @property
    def dtype(self) -> str:
        """The numpy dtype name that holds every image's values (``uint8``, ``uint16``, ...)."""
        return np.result_type(*sorted(self.dtypes)).name if self.dtypes else "float32"

    @property
    def value_range(self) -> list[float]:
        """[low, high] of the pixels seen."""
        return [float(self.low), float(self.high)]
