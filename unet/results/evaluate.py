"""Segmentation scores: Dice and IoU per class, object-level F1 for instance labels."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from unet.errors import InvalidImage, InvalidParameter
from unet.io.complete import ATTRIBUTE
from unet.io.files import read_labels

#: The most classes scored per class: a uint16 label's every value. Larger "labels" are object
#: ids (score them with ``instances``), and their per-class lists would not be read anyway.
MAX_CLASSES = 2**16


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 (num_classes, num_classes) pixel counts, rows the ground truth, columns the
    prediction. Both arrays hold class indices ``0 .. num_classes - 1``; ``num_classes`` is at
    most :data:`MAX_CLASSES` ** 0.5 (the matrix is dense: :func:`evaluate` needs none)."""
    _check_classes(num_classes, limit=int(MAX_CLASSES**0.5), what="a confusion matrix")
    _check_values(pred, gt, num_classes)
    index = gt.astype(np.int64).ravel() * num_classes + pred.astype(np.int64).ravel()
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def dice_iou(confusion: np.ndarray) -> tuple[list[float | None], list[float | None]]:
    """Dice ``2TP / (2TP + FP + FN)`` and IoU ``TP / (TP + FP + FN)`` per class from a confusion
    matrix; None for a class absent from both prediction and ground truth."""
    true_positive = np.diag(confusion).astype(np.float64)
    return _scores(true_positive, confusion.sum(axis=0), confusion.sum(axis=1))


def class_scores(
    pred: np.ndarray, gt: np.ndarray, num_classes: int
) -> tuple[list[float | None], list[float | None]]:
    """:func:`dice_iou` of the two label arrays, in memory linear in ``num_classes`` (no
    matrix): per class the pixels where both agree, and each side's pixel count."""
    _check_classes(num_classes, limit=MAX_CLASSES, what="per-class scores")
    _check_values(pred, gt, num_classes)
    pred, gt = pred.astype(np.int64).ravel(), gt.astype(np.int64).ravel()
    true_positive = np.bincount(gt[gt == pred], minlength=num_classes)
    predicted = np.bincount(pred, minlength=num_classes)
    true = np.bincount(gt, minlength=num_classes)
    return _scores(true_positive.astype(np.float64), predicted, true)


def _scores(
    true_positive: np.ndarray, predicted: np.ndarray, true: np.ndarray
) -> tuple[list[float | None], list[float | None]]:
    false_positive = predicted - true_positive
    false_negative = true - true_positive
    dice, iou = [], []
    for tp, fp, fn in zip(true_positive, false_positive, false_negative, strict=True):
        union = tp + fp + fn
        dice.append(float(2 * tp / (2 * tp + fp + fn)) if union else None)
        iou.append(float(tp / union) if union else None)
    return dice, iou


def _check_classes(num_classes: int, *, limit: int, what: str) -> None:
    if num_classes > limit:
        raise InvalidParameter(
            f"{num_classes:,} classes is more than {what} take ({limit:,}): labels this large "
            "are object ids, scored with --instances (instances=True); or give fewer classes"
        )


def _check_values(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> None:
    for name, array in (("prediction", pred), ("ground truth", gt)):
        if array.size and (array.min() < 0 or array.max() >= num_classes):
            raise InvalidImage(
                f"{name} holds values {array.min()}..{array.max()}, outside the "
                f"{num_classes} classes 0..{num_classes - 1}: pass num_classes"
            )


def match_objects(
    pred: np.ndarray, gt: np.ndarray, *, iou_threshold: float = 0.5
) -> dict[str, float | int | None]:
    """Match predicted to true objects one to one at IoU >= ``iou_threshold``.

    Pairs are taken greedily by decreasing IoU (ties by smaller true, then predicted id); above
    0.5 a match is unique anyway, so this is the usual object-level count.

    Parameters
    ----------
    pred, gt: integer (H, W) object ids, 0 = background

    Returns
    -------
    dict with ``true`` and ``predicted`` object counts, ``matched``, ``precision``, ``recall``
    and ``f1`` (None when undefined: no objects at all)
    """
    if not 0 < iou_threshold <= 1:
        raise InvalidParameter(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    true_ids, true_index = np.unique(gt, return_inverse=True)
    pred_ids, pred_index = np.unique(pred, return_inverse=True)
    true_index, pred_index = true_index.ravel(), pred_index.ravel()
    true_area = np.bincount(true_index)
    pred_area = np.bincount(pred_index)
    pairs, overlap = np.unique(true_index * pred_ids.size + pred_index, return_counts=True)
    pair_true, pair_pred = np.divmod(pairs, pred_ids.size)
    real = (true_ids[pair_true] != 0) & (pred_ids[pair_pred] != 0)
    pair_true, pair_pred, overlap = pair_true[real], pair_pred[real], overlap[real]
    iou = overlap / (true_area[pair_true] + pred_area[pair_pred] - overlap)
    order = np.lexsort((pair_pred, pair_true, -iou))
    used_true, used_pred = set(), set()
    for k in order:
        if iou[k] < iou_threshold:
            break
        if pair_true[k] not in used_true and pair_pred[k] not in used_pred:
            used_true.add(pair_true[k])
            used_pred.add(pair_pred[k])
    matched = len(used_true)
    n_true = int(np.count_nonzero(true_ids))
    n_pred = int(np.count_nonzero(pred_ids))
    return {
        "true": n_true,
        "predicted": n_pred,
        "matched": matched,
        "precision": matched / n_pred if n_pred else None,
        "recall": matched / n_true if n_true else None,
        "f1": 2 * matched / (n_true + n_pred) if n_true + n_pred else None,
    }


def evaluate(
    pred: np.ndarray,
    gt: np.ndarray,
    *,
    num_classes: int | None = None,
    instances: bool = False,
    iou_threshold: float = 0.5,
    nodata: int | None = None,
) -> dict[str, Any]:
    """Score a segmentation against the ground truth.

    Parameters
    ----------
    pred, gt: integer (H, W) arrays of one shape (a leading axis of length 1 is dropped)
    num_classes: classes for the per-class scores; default the largest value + 1 (at least 2).
        Ignored with ``instances``.
    instances: the arrays hold object ids (0 = background). Class scores are then
        background/foreground and object scores are added. An array holding only 0 and 1 (a
        class map) is split into connected components (4-connectivity) to give its objects.
    iou_threshold: IoU at which a predicted object matches a true one
    nodata: a label meaning "no data" (255 in masks of runs with no-data): pixels holding it in
        the prediction or the ground truth are left out of every score; it is no class

    Returns
    -------
    dict with ``num_classes``, per-class lists ``dice`` and ``iou`` (None for a class absent from
    both), ``foreground_dice`` and ``foreground_iou`` (means over the classes other than 0 that
    occur), ``pixels`` (those scored), with ``nodata`` also ``nodata_pixels`` (those left out),
    and with ``instances`` an ``objects`` dict (see :func:`match_objects`).
    """
    pred, gt = _check_pair(pred, gt)
    left_out = None
    if nodata is not None:
        # Pixels without data become background in both, so that they count in no class and
        # split or join no object; then they are taken out of the class counts.
        left_out = (pred == nodata) | (gt == nodata)
        pred, gt = np.where(left_out, 0, pred), np.where(left_out, 0, gt)
    if num_classes is not None and num_classes < 2:
        raise InvalidParameter(f"num_classes must be >= 2, got {num_classes}")
    if instances:
        classes = 2
        pred_classes, gt_classes = pred > 0, gt > 0
    else:
        classes = num_classes or max(int(pred.max()) + 1, int(gt.max()) + 1, 2)
        pred_classes, gt_classes = pred, gt
    if left_out is not None:  # only the pixels with data are scored
        pred_classes, gt_classes = pred_classes[~left_out], gt_classes[~left_out]
    dice, iou = class_scores(pred_classes, gt_classes, classes)
    result: dict[str, Any] = {
        "num_classes": classes,
        "dice": dice,
        "iou": iou,
        "foreground_dice": _mean(dice[1:]),
        "foreground_iou": _mean(iou[1:]),
        "pixels": int(pred_classes.size),
    }
    if left_out is not None:
        result["nodata_pixels"] = int(np.count_nonzero(left_out))
    if instances:
        result["objects"] = match_objects(_objects(pred), _objects(gt), iou_threshold=iou_threshold)
    return result


def evaluate_paths(
    pred: str | os.PathLike[str],
    gt: str | os.PathLike[str],
    *,
    num_classes: int | None = None,
    instances: bool = False,
    iou_threshold: float = 0.5,
    nodata: int | None = None,
) -> dict[str, Any]:
    """:func:`evaluate` on two label images read from TIFF, PNG or Zarr (array or OME-Zarr
    group, level ``"0"``). Both are loaded into memory. ``nodata`` defaults to the no-data label
    that a mask of ``unet segment`` declares (``pred``'s, else ``gt``'s)."""
    if nodata is None:
        nodata = declared_nodata(pred)
        nodata = declared_nodata(gt) if nodata is None else nodata
    return evaluate(
        read_labels(pred),
        read_labels(gt),
        num_classes=num_classes,
        instances=instances,
        iou_threshold=iou_threshold,
        nodata=nodata,
    )


def declared_nodata(path: str | os.PathLike[str]) -> int | None:
    """The no-data label a Zarr label image declares in its run record (``unet.nodata``, as
    ``unet segment`` writes it); None for other files and for masks without no-data."""
    import zarr

    try:
        group = zarr.open_group(store=str(path), mode="r")
    except (OSError, ValueError, KeyError, TypeError, zarr.errors.GroupNotFoundError):
        return None
    run = group.attrs.get(ATTRIBUTE)
    value = run.get("nodata") if isinstance(run, dict) else None
    return int(value) if isinstance(value, int | float) else None


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for name, array in (("prediction", pred), ("ground truth", gt)):
        array = np.asarray(array)
        if array.ndim == 3 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 2:
            raise InvalidImage(f"{name} must be (H, W) labels, got shape {array.shape}")
        if array.dtype == bool:
            array = array.astype(np.uint8)
        if array.dtype.kind not in "iu":
            raise InvalidImage(f"{name} has dtype {array.dtype}: labels must be integers")
        arrays.append(array)
    if arrays[0].shape != arrays[1].shape:
        raise InvalidImage(
            f"prediction {arrays[0].shape} and ground truth {arrays[1].shape} differ in shape"
        )
    return arrays[0], arrays[1]


def _objects(labels: np.ndarray) -> np.ndarray:
    """Object ids: the labels themselves, or connected components of a 0/1 class map."""
    if labels.size and labels.max() <= 1:
        from scipy.ndimage import label

        return label(labels)[0]
    return labels


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None
