"""Mirroring at the image border, exactly as ``numpy.pad(mode="reflect")``: the edge pixel is
not repeated, and pads longer than the image continue the pattern periodically.

Dask's ``boundary="reflect"`` is numpy's ``"symmetric"`` (the edge pixel repeated) and would give
another result; the paper's overlap-tile strategy needs numpy's ``"reflect"``.
"""

from __future__ import annotations

import numpy as np

from unet.errors import InvalidInputSize


def reflect_index(start: int, stop: int, n: int) -> np.ndarray:
    """Image indices of the positions ``start .. stop-1`` mirrored into ``0 .. n-1``.

    Matches ``numpy.pad(mode="reflect")`` for any pad length: the edge pixel is not repeated and
    the pattern repeats with period ``2 * (n - 1)``; a one-pixel axis repeats that pixel.

    Returns
    -------
    int64 (stop - start,)
    """
    if n < 1:
        raise InvalidInputSize(f"cannot mirror an empty axis (length {n})")
    positions = np.arange(start, stop, dtype=np.int64)
    if n == 1:
        return np.zeros_like(positions)
    period = 2 * (n - 1)
    folded = np.mod(positions, period)
    return np.where(folded >= n, period - folded, folded)


def mirror_pad(array: np.ndarray, before: tuple[int, int], after: tuple[int, int]) -> np.ndarray:
    """Mirror-pad the last two axes like ``numpy.pad(mode="reflect")``.

    Parameters
    ----------
    array: (..., H, W), any dtype
    before, after: pixels added in front of / behind (rows, columns)

    Returns
    -------
    (..., H + before[0] + after[0], W + before[1] + after[1]), same dtype
    """
    height, width = array.shape[-2:]
    if height < 1 or width < 1:
        raise InvalidInputSize(f"cannot mirror an empty axis (image {height}x{width})")
    # np.pad mirrors by slices, side by side: faster than gathering rows, then columns, by index
    # (reflect_index), for a 1116^2 uint8 window at a corner (figures: benchmarks/README.md).
    pads = [(0, 0)] * (array.ndim - 2) + [(before[0], after[0]), (before[1], after[1])]
    return np.pad(array, pads, mode="reflect")
