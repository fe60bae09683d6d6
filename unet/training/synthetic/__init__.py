"""Synthetic images with ground truth, of any size, rendered block by block.

A scene is a small frozen description (shape, seed, a few densities); ``render(scene, rows, cols)``
draws any region of it. Everything random is a function of *global* coordinates, never of the
block being drawn, so a region comes out identical whatever the partition into blocks:

- objects (nuclei, buildings) come from a Poisson process generated per fixed cell of the plane by
  a generator seeded with ``(seed, stream, cell)``; a block generates only the cells near it, so a
  scene needs no memory proportional to its size;
- smooth fields (background, tissue outline, textures) are value noise on integer lattices hashed
  from ``(seed, stream, lattice point)``;
- pixel noise comes from fixed 256 x 256 tiles, each from a generator seeded by its position.

Rendering is vectorised per block: every object near the block is drawn at once as a small stamp,
and overlapping objects are split pixel by pixel in favour of the object the pixel is most inside.

Three scenes: :class:`NucleiScene` (fluorescent nuclei, 1 channel, instance labels, touching
nuclei included), :class:`TissueScene` (H&E-like RGB slide: white glass, pink stroma, purple
nuclei; classes background/tissue/nucleus) and :class:`SatelliteScene` (4 bands R, G, B, NIR;
classes other/field/road/building/water).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np

from unet.errors import InvalidParameter
from unet.training.synthetic.objects import check_region
from unet.training.synthetic.scenes import NucleiScene, SatelliteScene, TissueScene

__all__ = [
    "NucleiScene",
    "SatelliteScene",
    "Scene",
    "TissueScene",
    "nuclei_image",
    "render",
    "satellite_reflectance",
    "write_nuclei_dataset",
    "write_to_zarr",
]


class Scene(Protocol):
    """What :func:`render` and :func:`write_to_zarr` need of a scene."""

    shape: tuple[int, int]
    seed: int
    channels: ClassVar[int]
    class_names: ClassVar[tuple[str, ...]]
    #: True when labels are instance ids (0 = background), False when they are class indices.
    instances: ClassVar[bool]

    def render(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]: ...


def render(scene: Scene, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
    """Draw the region ``[rows, cols]`` of ``scene``.

    Returns
    -------
    image: uint8 (C, h, w)
    labels: int32 (h, w); instance ids or class indices, see ``scene.instances``

    The result does not depend on how the scene is cut into regions.
    """
    rows, cols = check_region(scene.shape, rows, cols)
    return scene.render(rows, cols)


def write_to_zarr(
    scene: Scene,
    image_array,
    labels_array=None,
    *,
    block: int = 1024,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Fill zarr arrays with ``scene`` one block at a time.

    Parameters
    ----------
    image_array: zarr array (or any array-like accepting slice assignment) of shape (C, Y, X)
    labels_array: optional array of shape (Y, X) for the labels
    block: side of the blocks rendered at once; a multiple of the arrays' chunks writes each chunk
        once
    progress: called as ``progress(done, total)`` after each block
    """
    channels, (height, width) = scene.channels, scene.shape
    if tuple(image_array.shape) != (channels, height, width):
        raise InvalidParameter(
            f"image array has shape {tuple(image_array.shape)}, the scene needs "
            f"{(channels, height, width)}: create it with that shape"
        )
    if labels_array is not None and tuple(labels_array.shape) != (height, width):
        raise InvalidParameter(
            f"labels array has shape {tuple(labels_array.shape)}, the scene needs {(height, width)}"
        )
    if block < 1:
        raise InvalidParameter(f"block must be >= 1, got {block}")
    regions = [
        (slice(y, min(y + block, height)), slice(x, min(x + block, width)))
        for y in range(0, height, block)
        for x in range(0, width, block)
    ]
    for done, (rows, cols) in enumerate(regions, start=1):
        image, labels = scene.render(rows, cols)
        image_array[:, rows, cols] = image
        if labels_array is not None:
            labels_array[rows, cols] = labels
        if progress is not None:
            progress(done, len(regions))


def nuclei_image(
    shape: tuple[int, int], seed: int = 0, *, varied: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """A small fluorescent-nuclei image in memory.

    ``varied`` draws the scene's look from ``seed`` (:meth:`NucleiScene.varied`) instead of the
    default crisp, bright nuclei.

    Returns
    -------
    image: uint8 (Y, X)
    labels: int32 (Y, X) instance labels numbered 1..N (0 = background)
    """
    from skimage.segmentation import relabel_sequential

    shape = (int(shape[0]), int(shape[1]))
    scene = NucleiScene.varied(shape, seed) if varied else NucleiScene(shape=shape, seed=seed)
    image, labels = render(scene, slice(0, scene.shape[0]), slice(0, scene.shape[1]))
    return image[0], relabel_sequential(labels)[0].astype(np.int32)


def satellite_reflectance(image: np.ndarray) -> np.ndarray:
    """A :class:`SatelliteScene`'s uint8 bands as uint16 reflectance-like values, as
    ``scripts/make_scene.py`` writes its GeoTIFF and training tiles: ``40 * value + 1``, so
    that 0 stays free for no-data.

    Parameters
    ----------
    image: uint8 (C, h, w)

    Returns
    -------
    uint16 (C, h, w), 1..10201
    """
    return image.astype(np.uint16) * 40 + 1


def write_nuclei_dataset(
    data_dir: str | os.PathLike[str],
    *,
    count: int = 16,
    size: int = 256,
    seed: int = 0,
    varied: bool = False,
) -> Path:
    """Write ``count`` nuclei images of ``size`` x ``size`` as a training data directory.

    Image ``i`` is ``nuclei_image((size, size), seed + i, varied=varied)``, written as
    ``images/<kind>_<i>.tif`` (uint8) and ``masks/<kind>_<i>.tif`` (int32 instance labels), the
    layout ``unet train`` reads; ``<kind>`` is ``nuclei`` or ``varied``, so both kinds can share
    one directory.
    """
    import tifffile

    if count < 1 or size < 1:
        raise InvalidParameter(f"count and size must be >= 1, got {count} and {size}")
    root = Path(data_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    kind = "varied" if varied else "nuclei"
    for index in range(count):
        image, labels = nuclei_image((size, size), seed + index, varied=varied)
        tifffile.imwrite(root / "images" / f"{kind}_{index:04d}.tif", image)
        tifffile.imwrite(root / "masks" / f"{kind}_{index:04d}.tif", labels)
    return root
