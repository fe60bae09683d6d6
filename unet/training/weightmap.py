"""The paper's pixel-wise loss weights.

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))

``w_c`` balances the class frequencies; ``d1`` and ``d2`` are the distances to the nearest and
the second-nearest object. The border term gives the thin background gaps between touching
objects a large weight, so the network learns to separate them. It applies to background pixels
only (inside an object ``d1`` is 0 and the term would merely up-weight object pixels near a
neighbour); with fewer than two objects it is zero.
"""

from __future__ import annotations

import math

import numpy as np

from unet.errors import InvalidImage, InvalidParameter

#: Border terms smaller than this are dropped, which bounds how far each object's distance
#: transform has to reach.
NEGLIGIBLE = 1e-3


def class_balance(classes: np.ndarray) -> np.ndarray:
    """Per-pixel class-balancing weights ``w_c``: ``N / (K * n_k)`` for a pixel of class ``k``.

    ``N`` is the number of pixels, ``n_k`` that of class ``k`` and ``K`` the number of classes
    present, so every present class carries the same total weight and the mean weight is 1.

    Parameters
    ----------
    classes: integer (H, W) class indices

    Returns
    -------
    float32 (H, W)
    """
    values, inverse, counts = np.unique(classes, return_inverse=True, return_counts=True)
    per_class = classes.size / (values.size * counts)
    return per_class[inverse.reshape(classes.shape)].astype(np.float32)


def weight_map(
    instances: np.ndarray,
    classes: np.ndarray | None = None,
    *,
    w0: float = 10.0,
    sigma: float = 5.0,
) -> np.ndarray:
    """Loss weights of one labelled image, computed once per image.

    Parameters
    ----------
    instances: integer (H, W) object ids, 0 = background; ids need not be consecutive
    classes: integer (H, W) class indices for ``w_c``; default ``instances > 0``
        (background/foreground)
    w0, sigma: the border term's height and width in pixels (10 and 5 in the paper)

    Returns
    -------
    float32 (H, W); exact up to border terms below :data:`NEGLIGIBLE`.
    """
    if instances.ndim != 2 or instances.dtype.kind not in "iub":
        raise InvalidImage(
            f"instance labels must be an integer (H, W) array, got {instances.dtype} "
            f"{instances.shape}"
        )
    if w0 < 0 or sigma <= 0:
        raise InvalidParameter(f"need w0 >= 0 and sigma > 0, got w0={w0}, sigma={sigma}")
    if classes is None:
        classes = instances > 0
    elif classes.shape != instances.shape:
        raise InvalidImage(f"classes {classes.shape} and instances {instances.shape} differ")
    weights = class_balance(classes)
    if w0 == 0:
        return weights
    nearest, second = _two_nearest(instances, reach=_reach(w0, sigma))
    border = w0 * np.exp(-((nearest + second) ** 2) / (2 * sigma**2))
    weights += np.where(instances == 0, border, 0.0).astype(np.float32)
    return weights


def _reach(w0: float, sigma: float) -> int:
    """Distance beyond which the border term is below NEGLIGIBLE."""
    if w0 <= NEGLIGIBLE:
        return 0
    return math.ceil(sigma * math.sqrt(2 * math.log(w0 / NEGLIGIBLE)))


def _two_nearest(instances: np.ndarray, reach: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances (float64 (H, W)) to the nearest and second-nearest object, each object's
    distance transform computed only within ``reach`` of it (inf further away)."""
    from scipy.ndimage import distance_transform_edt, find_objects
    from skimage.segmentation import relabel_sequential

    labels = relabel_sequential(np.asarray(instances, dtype=np.int64))[0]
    height, width = labels.shape
    nearest = np.full(labels.shape, np.inf)
    second = np.full(labels.shape, np.inf)
    for index, box in enumerate(find_objects(labels), start=1):
        if box is None:
            continue
        region = (
            slice(max(box[0].start - reach, 0), min(box[0].stop + reach, height)),
            slice(max(box[1].start - reach, 0), min(box[1].stop + reach, width)),
        )
        # The object lies wholly in its region, so distances inside the region are exact.
        distance = distance_transform_edt(labels[region] != index)
        first, other = nearest[region], second[region]
        closer = distance < first
        second[region] = np.where(closer, first, np.minimum(other, distance))
        nearest[region] = np.where(closer, distance, first)
    return nearest, second
