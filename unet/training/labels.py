"""From a stored mask to what training needs: a class per pixel (or :data:`IGNORED`) and the
objects whose borders the weight map emphasises. Used alike for a whole image read at once and
for a window read from a slide."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from unet.errors import InvalidImage
from unet.training.weightmap import IGNORED


@dataclass(frozen=True)
class LabelRules:
    """How mask values become classes.

    Attributes
    ----------
    class_map: mask value -> class; None: every non-zero value is an object id of class 1
    ignore_label: mask value of unannotated pixels (class :data:`IGNORED`), or None
    """

    class_map: Mapping[int, int] | None = None
    ignore_label: int | None = None

    def classes(self, mask: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
        """Classes and objects of an integer (h, w) mask.

        Without a class map a mask's non-zero values are object ids of class 1; with it they
        are mapped to classes and objects are the connected regions of one value (in a window
        of a slide: connected within the window). Pixels holding the ignore label are class
        :data:`IGNORED` and no object.

        Returns
        -------
        classes: int64 (h, w), ``0 .. K-1`` or :data:`IGNORED`
        objects: int64 (h, w) object ids, 0 for background and unannotated pixels

        Raises
        ------
        InvalidImage
            Negative values, or values the class map does not assign (``where`` names the mask).
        """
        mask = mask.astype(np.int64, copy=False)
        annotated = mask != self.ignore_label if self.ignore_label is not None else None
        values = mask if annotated is None else np.where(annotated, mask, 0)
        if values.size and values.min() < 0:
            raise InvalidImage(f"{where} holds negative labels: use 0 for background, >0 objects")
        if self.class_map is None:
            classes, objects = (values > 0).astype(np.int64), values
        else:
            classes = _apply_class_map(values, self.class_map, where)
            from skimage.measure import label

            objects = label(np.where(classes > 0, values, 0), background=0, connectivity=1)
            objects = objects.astype(np.int64, copy=False)
        if annotated is not None:
            classes = np.where(annotated, classes, IGNORED)
            objects = np.where(annotated, objects, 0)
        return classes, objects


def _apply_class_map(mask: np.ndarray, class_map: Mapping[int, int], where: str) -> np.ndarray:
    values = np.unique(mask)
    unmapped = [int(v) for v in values if v != 0 and int(v) not in class_map]
    if unmapped:
        shown = ", ".join(str(v) for v in unmapped[:5])
        more = f" and {len(unmapped) - 5} more" if len(unmapped) > 5 else ""
        raise InvalidImage(
            f"{where} holds values {shown}{more} that the class map does not assign: add them "
            "to the class map (or give them as --ignore-label)"
        )
    lookup = np.zeros(int(values.max()) + 1, np.int64)
    for value, cls in class_map.items():
        if value < lookup.size:
            lookup[value] = cls
    return lookup[mask]
