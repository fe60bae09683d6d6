"""Masks with known objects for the instance tests, and the whole-image reference."""

from __future__ import annotations

import numpy as np


def reference_instances(mask: np.ndarray) -> np.ndarray:
    """int64 (H, W): :func:`skimage.measure.label` (4-connectivity) of each foreground class of
    the whole mask, ids made unique across classes."""
    from skimage.measure import label

    result = np.zeros(mask.shape, np.int64)
    for value in np.unique(mask):
        if value == 0:
            continue
        labels, count = label(mask == value, connectivity=1, return_num=True)
        result[labels > 0] = labels[labels > 0] + result.max()
    return result


def assert_same_objects(instances: np.ndarray, mask: np.ndarray) -> None:
    """``instances`` equals the whole-image reference up to a renumbering of the ids."""
    reference = reference_instances(mask)
    assert np.array_equal(instances == 0, reference == 0), "background differs"
    pairs = np.unique(np.stack([instances.ravel(), reference.ravel()]), axis=1)
    ours, theirs = np.unique(pairs[0]), np.unique(pairs[1])
    assert len(pairs[0]) == len(ours) == len(theirs), (
        f"{len(ours)} ids against {len(theirs)} reference objects in {len(pairs[0])} pairs: "
        "objects are split or merged"
    )


def snake(shape: tuple[int, int], period: int = 4) -> np.ndarray:
    """uint8: one 1-pixel-wide object winding over the whole image, row after row (boustrophedon):
    every other row is foreground, joined at alternating ends."""
    mask = np.zeros(shape, np.uint8)
    height, width = shape
    rows = list(range(0, height, 2))
    for k, row in enumerate(rows):
        mask[row, :] = 1
        if k + 1 < len(rows):
            mask[row : row + 3, width - 1 if k % 2 == 0 else 0] = 1
    return mask


def corners(shape: tuple[int, int], chunk: int) -> np.ndarray:
    """uint8, around every inner chunk corner: a plus of class 1 centred on it (one object in four
    chunks), a class-2 pixel beside the plus (its own object: another class) and two class-2
    pixels meeting only diagonally (two objects)."""
    mask = np.zeros(shape, np.uint8)
    height, width = shape
    for y in range(chunk, height - 4, chunk):
        for x in range(chunk, width - 4, chunk):
            mask[y - 3 : y + 3, x - 1 : x + 1] = 1
            mask[y - 1 : y + 1, x - 3 : x + 3] = 1
            mask[y - 2, x + 1] = 2
            mask[y + 2, x + 2] = mask[y + 3, x + 3] = 2
    return mask


def diagonal_at_corner(chunk: int) -> np.ndarray:
    """uint8 (2 chunk, 2 chunk): class-1 squares in the top-left and bottom-right chunks meeting
    only at the chunk corner (two objects), and a class-2 square in the top-right chunk touching
    both along chunk borders (a third)."""
    mask = np.zeros((2 * chunk, 2 * chunk), np.uint8)
    mask[chunk - 2 : chunk, chunk - 2 : chunk] = 1
    mask[chunk : chunk + 2, chunk : chunk + 2] = 1
    mask[chunk - 2 : chunk, chunk : chunk + 2] = 2
    return mask


def spanning(shape: tuple[int, int]) -> np.ndarray:
    """uint8: one object of class 1 touching every chunk (a frame and a cross), with class-2
    holes inside it."""
    mask = np.zeros(shape, np.uint8)
    height, width = shape
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = 1
    mask[height // 2, :] = mask[:, width // 2] = 1
    mask[1::3, 1::3] = np.where(mask[1::3, 1::3] == 0, 2, mask[1::3, 1::3])
    mask[2:-2:2, 2:-2] = np.maximum(mask[2:-2:2, 2:-2], 1)
    return mask


def noise(shape: tuple[int, int], classes: int, seed: int = 0) -> np.ndarray:
    """uint8: random labels 0 .. classes - 1 with about half background, many small objects."""
    rng = np.random.default_rng(seed)
    mask = rng.integers(1, classes, size=shape).astype(np.uint8)
    mask[rng.random(shape) < 0.45] = 0
    return mask
