"""Which chunks hold tissue: Otsu on a low-resolution view of the image (pure numpy/skimage).

Brightfield slides have bright background and dark tissue, fluorescence the reverse: the side of
the Otsu threshold that holds most of the image border is taken as background. Chunks with no
tissue pixel get label 0 without running the model, so the mask of a skipped run can differ from
a full run only where the model would have found foreground in pure background.
"""

from __future__ import annotations

import numpy as np

from unet.tiling import ChunkGrid


def tissue_mask(low_resolution: np.ndarray, dilation: int = 1) -> np.ndarray:
    """bool (h, w) tissue mask of a (C, h, w) low-resolution image.

    NaN and infinite pixels are no data: never tissue, and left out of the threshold.
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    gray = low_resolution.astype(np.float32).mean(axis=0)
    finite = np.isfinite(gray)
    values = gray[finite]
    if values.size == 0 or values.max() == values.min():
        return np.zeros(gray.shape, bool)
    threshold = threshold_otsu(values)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    border = border[np.isfinite(border)]
    bright_background = border.size == 0 or np.mean(border > threshold) >= 0.5
    tissue = (gray <= threshold if bright_background else gray > threshold) & finite
    if dilation > 0:
        tissue = ndimage.binary_dilation(tissue, iterations=dilation)
    return tissue


def chunks_with_tissue(tissue: np.ndarray, factor: int, grid: ChunkGrid) -> np.ndarray:
    """bool (chunks_y, chunks_x): whether each chunk of ``grid`` overlaps the tissue mask.

    ``tissue`` pixel (i, j) covers level-0 rows ``i*factor .. (i+1)*factor - 1`` (same for columns).
    """
    from unet.tiling import cells_in_chunks

    return cells_in_chunks(tissue, (factor, factor), grid) > 0
