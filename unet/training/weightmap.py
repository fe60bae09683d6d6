"""The paper's pixel-wise loss weights.

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))

``w_c`` balances the class frequencies; ``d1`` and ``d2`` are the distances to the nearest and
the second-nearest object. The border term gives the thin background gaps between touching
objects a large weight, so the network learns to separate them. It applies to background pixels
only (inside an object ``d1`` is 0 and the term would merely up-weight object pixels near a
neighbour); with fewer than two objects it is zero.

Pixels of class :data:`IGNORED` (unannotated) get weight 0, count in no class frequency and are
no object.
"""

from __future__ import annotations

import math

import numpy as np

from unet.errors import InvalidImage, InvalidParameter

#: Border terms smaller than this are dropped, which bounds how far each object's distance
#: transform has to reach.
NEGLIGIBLE = 1e-3
#: The class of unannotated pixels (a mask's ignore label): no loss, no weight, no score.
IGNORED = -1


def class_weights(counts: np.ndarray) -> np.ndarray:
    """``w_c`` per class from pixel counts per class: ``N / (K * n_k)``.

    ``N`` is the number of (annotated) pixels, ``n_k`` that of class ``k`` and ``K`` the number of
    classes present, so every present class carries the same total weight and the mean weight
    is 1. Absent classes get 0.

    Parameters
    ----------
    counts: integer (num_classes,) pixels per class

    Returns
    -------
    float64 (num_classes,)
    """
    counts = np.asarray(counts, np.float64)
    present = counts > 0
    weights = np.zeros(counts.shape, np.float64)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def class_balance(classes: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Per-pixel class-balancing weights ``w_c`` (:func:`class_weights`), 0 on :data:`IGNORED`.

    Parameters
    ----------
    classes: integer (H, W) class indices, :data:`IGNORED` for unannotated pixels
    weights: float (num_classes,) ``w_c`` per class; default from the counts in ``classes``
        (a whole slide passes the slide's, counted once)

    Returns
    -------
    float32 (H, W)
    """
    annotated = classes != IGNORED
    if weights is None:
        weights = class_weights(np.bincount(classes[annotated].ravel()))
    lookup = np.append(np.asarray(weights, np.float64), 0.0)  # index -1: IGNORED
    return lookup[np.where(annotated, classes, -1)].astype(np.float32)


def weight_map(
    instances: np.ndarray,
    classes: np.ndarray | None = None,
    *,
    w0: float = 10.0,
    sigma: float = 5.0,
    weights_per_class: np.ndarray | None = None,
) -> np.ndarray:
    """Loss weights of one labelled image (or of a window of a slide with :func:`reach` of
    context on every side).

    Parameters
    ----------
    instances: integer (H, W) object ids, 0 = background or unannotated; ids need not be
        consecutive
    classes: integer (H, W) class indices for ``w_c``, :data:`IGNORED` where unannotated;
        default ``instances > 0`` (background/foreground)
    w0, sigma: the border term's height and width in pixels (10 and 5 in the paper)
    weights_per_class: ``w_c`` per class (:func:`class_weights`); default from ``classes``

    Returns
    -------
    float32 (H, W); exact up to border terms below :data:`NEGLIGIBLE`, 0 where ``classes`` is
    :data:`IGNORED`. A pixel's border term depends only on the objects within :func:`reach` of
    it, so a window read with that much context has the whole image's weights inside.
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
    weights = class_balance(classes, weights_per_class)
    if w0 == 0:
        return weights
    nearest, second = _two_nearest(instances, reach=reach(w0, sigma))
    border = w0 * np.exp(-((nearest + second) ** 2) / (2 * sigma**2))
    weights += np.where((instances == 0) & (classes != IGNORED), border, 0.0).astype(np.float32)
    return weights


def reach(w0: float, sigma: float) -> int:
    """Distance in pixels beyond which an object's border term is below :data:`NEGLIGIBLE`."""
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
