"""Data augmentation: the paper's elastic deformation, flips and 90-degree rotations.

Images are resampled bicubically, masks (labels, loss weights) by nearest neighbour, so masks
keep their exact values and stay aligned with the image. Pure numpy/scipy; randomness only
from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import numpy as np

from unet.errors import InvalidImage, InvalidParameter


def elastic_field(
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    grid: int = 3,
    sigma: float = 10.0,
) -> np.ndarray:
    """A smooth random displacement field.

    Displacements are drawn from N(0, sigma) pixels on a coarse ``grid`` x ``grid`` lattice
    spanning the image corner to corner and interpolated bicubically (cubic spline) to every
    pixel (Ronneberger et al. 2015: 3 x 3 grid, sigma 10 pixels).

    Returns
    -------
    float32 (2, H, W): row and column displacement of each output pixel's source position
    """
    if grid < 2 or sigma < 0:
        raise InvalidParameter(f"need grid >= 2 and sigma >= 0, got grid={grid}, sigma={sigma}")
    coarse = rng.normal(0.0, sigma, size=(2, grid, grid))
    rows, cols = _cubic_basis(shape[0], grid), _cubic_basis(shape[1], grid)
    # Cubic-spline interpolation is separable: rows @ coarse @ cols.T per component.
    return np.einsum("yi,cij,xj->cyx", rows, coarse, cols).astype(np.float32)


def warp(array: np.ndarray, field: np.ndarray, *, order: int) -> np.ndarray:
    """Resample ``array`` at ``pixel + field``.

    Parameters
    ----------
    array: (H, W) or (C, H, W), any real dtype
    field: float (2, H, W) from :func:`elastic_field`
    order: 3 for bicubic (images), 0 for nearest (labels, weights; values are kept exactly)

    Positions outside the array are mirrored like ``numpy.pad(mode="reflect")``.

    Returns
    -------
    array of the same shape and dtype
    """
    from scipy.ndimage import map_coordinates

    if array.shape[-2:] != field.shape[-2:]:
        raise InvalidImage(f"array {array.shape} and field {field.shape} differ in size")
    height, width = array.shape[-2:]
    grid = np.mgrid[0:height, 0:width].astype(np.float32)
    coordinates = grid + field
    planes = array.reshape(-1, height, width)
    warped = np.stack(
        [map_coordinates(plane, coordinates, order=order, mode="mirror") for plane in planes]
    )
    return warped.reshape(array.shape)


def elastic_deform(
    image: np.ndarray,
    *masks: np.ndarray,
    rng: np.random.Generator,
    grid: int = 3,
    sigma: float = 10.0,
    order: int = 3,
) -> tuple[np.ndarray, ...]:
    """Deform an image and its masks with one random elastic field.

    Parameters
    ----------
    image: (C, H, W) or (H, W), resampled with spline ``order`` (3: bicubic)
    masks: (H, W) arrays (labels, weights), resampled by nearest neighbour

    Returns
    -------
    (image, *masks), same shapes and dtypes
    """
    field = elastic_field(image.shape[-2:], rng, grid=grid, sigma=sigma)
    return (warp(image, field, order=order), *(warp(mask, field, order=0) for mask in masks))


def flip_rotate(*arrays: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Apply one of the 8 flips/90-degree rotations, drawn at random, to the last two axes of
    every array (all must be square and of one size when rotated)."""
    turns = int(rng.integers(4))
    flip = bool(rng.integers(2))
    out = []
    for array in arrays:
        array = np.rot90(array, turns, axes=(-2, -1))
        if flip:
            array = array[..., ::-1]
        out.append(np.ascontiguousarray(array))
    return tuple(out)


def augment(
    image: np.ndarray,
    *masks: np.ndarray,
    rng: np.random.Generator,
    elastic: bool = True,
    grid: int = 3,
    sigma: float = 10.0,
) -> tuple[np.ndarray, ...]:
    """Elastic deformation (if ``elastic``) followed by a random flip/rotation."""
    arrays = (image, *masks)
    if elastic:
        arrays = elastic_deform(image, *masks, rng=rng, grid=grid, sigma=sigma)
    return flip_rotate(*arrays, rng=rng)


def _cubic_basis(n: int, grid: int) -> np.ndarray:
    """float64 (n, grid): cubic-spline weights of the ``grid`` lattice values at ``n`` pixels
    spread evenly from the first lattice point to the last."""
    from scipy.ndimage import map_coordinates

    positions = np.linspace(0.0, grid - 1.0, n)[None]
    return np.stack(
        [map_coordinates(unit, positions, order=3, mode="mirror") for unit in np.eye(grid)],
        axis=1,
    )
