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
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple, Protocol

import numpy as np

from unet.errors import InvalidParameter

_MASK64 = (1 << 64) - 1
_NOISE_TILE = 256
#: Cell side of the object processes; objects of a cell are numbered within it.
_CELL = 128
#: Objects kept per cell at most; instance id = cell index * _PER_CELL + k + 1.
_PER_CELL = 256


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
    rows, cols = _check_region(scene.shape, rows, cols)
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


def nuclei_image(shape: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A small fluorescent-nuclei image in memory.

    Returns
    -------
    image: uint8 (Y, X)
    labels: int32 (Y, X) instance labels numbered 1..N (0 = background)
    """
    from skimage.segmentation import relabel_sequential

    scene = NucleiScene(shape=(int(shape[0]), int(shape[1])), seed=seed)
    image, labels = render(scene, slice(0, scene.shape[0]), slice(0, scene.shape[1]))
    return image[0], relabel_sequential(labels)[0].astype(np.int32)


def write_nuclei_dataset(
    data_dir: str | os.PathLike[str],
    *,
    count: int = 16,
    size: int = 256,
    seed: int = 0,
) -> Path:
    """Write ``count`` nuclei images of ``size`` x ``size`` as a training data directory.

    Image ``i`` is ``nuclei_image((size, size), seed + i)``, written as ``images/nuclei_<i>.tif``
    (uint8) and ``masks/nuclei_<i>.tif`` (int32 instance labels), the layout ``unet train`` reads.
    """
    import tifffile

    if count < 1 or size < 1:
        raise InvalidParameter(f"count and size must be >= 1, got {count} and {size}")
    root = Path(data_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image, labels = nuclei_image((size, size), seed + index)
        tifffile.imwrite(root / "images" / f"nuclei_{index:04d}.tif", image)
        tifffile.imwrite(root / "masks" / f"nuclei_{index:04d}.tif", labels)
    return root


# --------------------------------------------------------------------------------------------
# Scenes


@dataclass(frozen=True)
class NucleiScene:
    """Fluorescent nuclei: bright textured ellipses on a dark, uneven, noisy background.

    Nuclei form a clustered Poisson process: about half of them have neighbours placed so that
    they touch or nearly touch, which is what the weight map's border term is for. Density
    varies smoothly over the slide (crowded and sparse regions).

    Parameters
    ----------
    shape: (Y, X)
    seed: any non-negative integer
    density: mean nuclei per pixel
    radius: range of the nuclei's mean radius in pixels
    """

    shape: tuple[int, int]
    seed: int = 0
    density: float = 1 / 700
    radius: tuple[float, float] = (5.0, 10.0)

    channels: ClassVar[int] = 1
    class_names: ClassVar[tuple[str, ...]] = ("background", "nucleus")
    instances: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_scene(self.shape, self.seed)
        if not (0 < self.radius[0] <= self.radius[1] <= 20):
            raise InvalidParameter(f"radius must satisfy 0 < low <= high <= 20, got {self.radius}")

    def render(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        blobs = _cluster_blobs(
            self.shape, _key(self.seed, 0), rows, cols, self.density, self.radius
        )
        labels, brightness = _draw_nuclei(blobs, self.shape, rows, cols, blur=1.0)
        texture = 0.7 + 0.6 * _value_noise(_key(self.seed, 1), rows, cols, 2.5)
        background = 14.0 + 14.0 * _value_noise(_key(self.seed, 2), rows, cols, 300.0)
        clean = background + brightness * texture
        # Shot noise grows with the signal, read noise does not.
        noisy = clean + _gaussian_noise(_key(self.seed, 3), rows, cols) * np.sqrt(6.0 + 0.6 * clean)
        return _to_uint8(noisy)[None], labels


@dataclass(frozen=True)
class TissueScene:
    """An H&E-like slide: tissue islands of pink, fibrous stroma with purple nuclei on white glass.

    Colours follow Beer-Lambert with the usual haematoxylin and eosin stain vectors. Labels are
    classes: 0 background (glass), 1 tissue, 2 nucleus.
    """

    shape: tuple[int, int]
    seed: int = 0
    tissue_fraction: float = 0.5
    density: float = 1 / 260
    radius: tuple[float, float] = (3.0, 6.5)

    channels: ClassVar[int] = 3
    class_names: ClassVar[tuple[str, ...]] = ("background", "tissue", "nucleus")
    instances: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check_scene(self.shape, self.seed)
        if not 0 < self.tissue_fraction < 1:
            raise InvalidParameter(f"tissue_fraction must be in (0, 1), got {self.tissue_fraction}")

    def _tissue_field(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Smooth field whose upper ``tissue_fraction`` is tissue, at points (float64)."""
        coarse = _value_noise_at(_key(self.seed, 10), y, x, 900.0)
        return 0.8 * coarse + 0.2 * _value_noise_at(_key(self.seed, 11), y, x, 120.0)

    def _threshold(self) -> float:
        """The field's ``1 - tissue_fraction`` quantile over a fixed sample of the whole slide
        (value noise is not uniform, so the level is measured, not assumed)."""
        sample = np.random.default_rng([_key(self.seed, 17)]).random((2, 4096))
        field = self._tissue_field(sample[0] * self.shape[0], sample[1] * self.shape[1])
        return float(np.quantile(field, 1 - self.tissue_fraction))

    def render(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        threshold = self._threshold()
        field = 0.8 * _value_noise(_key(self.seed, 10), rows, cols, 900.0) + (
            0.2 * _value_noise(_key(self.seed, 11), rows, cols, 120.0)
        )
        blobs = _cluster_blobs(
            self.shape, _key(self.seed, 12), rows, cols, self.density, self.radius
        )
        blobs = blobs.take(self._tissue_field(blobs.y, blobs.x) > threshold + 0.01)
        nuclei, stain = _draw_nuclei(blobs, self.shape, rows, cols, blur=0.8)
        # Tissue fades in over a few pixels at its outline, as a cut section does.
        inside = np.clip((field - threshold) / 0.01, 0.0, 1.0)
        y = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None]
        x = np.arange(cols.start, cols.stop, dtype=np.float32)[None, :]
        warp = 7.0 * _value_noise(_key(self.seed, 13), rows, cols, 40.0)
        fibres = 0.5 + 0.5 * np.sin((0.8 * y + 0.6 * x) / 3.5 + warp)
        patchy = _value_noise(_key(self.seed, 14), rows, cols, 25.0)
        eosin = inside * (0.25 + 0.25 * fibres * patchy + 0.15 * patchy)
        chromatin = 0.75 + 0.5 * _value_noise(_key(self.seed, 15), rows, cols, 2.0)
        # Nucleus stain is an intensity in 0..200; 1/150 makes a dense nucleus dark purple.
        haematoxylin = inside * 0.04 + stain * chromatin / 150.0
        optical_density = (
            haematoxylin[None] * np.array([0.65, 0.70, 0.29], np.float32)[:, None, None]
            + eosin[None] * np.array([0.07, 0.99, 0.11], np.float32)[:, None, None]
        )
        noise = _gaussian_noise(_key(self.seed, 16), rows, cols)
        image = 245.0 * np.exp(-optical_density) + 3.0 * noise[None]
        labels = np.where(nuclei > 0, 2, field > threshold).astype(np.int32)
        return _to_uint8(image), labels


@dataclass(frozen=True)
class SatelliteScene:
    """A rural scene from above: field parcels with crop rows, meadows, lakes, winding roads and
    villages of rectangular buildings. Bands R, G, B, NIR; labels are classes
    0 other, 1 field, 2 road, 3 building, 4 water."""

    shape: tuple[int, int]
    seed: int = 0
    parcel: float = 180.0
    road_spacing: int = 700

    channels: ClassVar[int] = 4
    class_names: ClassVar[tuple[str, ...]] = ("other", "field", "road", "building", "water")
    instances: ClassVar[bool] = False

    # Reflectances (R, G, B, NIR) of crops, meadow, hedge, water, asphalt and two kinds of roof.
    _CROPS: ClassVar[np.ndarray] = np.array(
        [[70, 110, 50, 190], [95, 140, 60, 210], [175, 160, 95, 120], [140, 110, 80, 95]],
        np.float32,
    )
    _MEADOW: ClassVar[np.ndarray] = np.array([85, 125, 65, 170], np.float32)
    _HEDGE: ClassVar[np.ndarray] = np.array([45, 80, 40, 150], np.float32)
    _WATER: ClassVar[np.ndarray] = np.array([30, 55, 75, 12], np.float32)
    _ROAD: ClassVar[np.ndarray] = np.array([118, 118, 122, 95], np.float32)
    _ROOFS: ClassVar[np.ndarray] = np.array([[160, 75, 60, 80], [175, 175, 175, 110]], np.float32)

    def __post_init__(self) -> None:
        _check_scene(self.shape, self.seed)
        if self.parcel < 20 or self.road_spacing < 200:
            raise InvalidParameter("parcel must be >= 20 and road_spacing >= 200 pixels")

    def render(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        image, labels = self._parcels(rows, cols)

        water = _value_noise(_key(self.seed, 20), rows, cols, 700.0) > 0.78
        image[:, water] = self._WATER[:, None]
        labels[water] = 4

        houses = self._buildings(rows, cols)
        ids = _draw(houses, rows, cols, shape="rectangle")[0]
        built = ids > 0
        red_roof = _hash_uniform(_key(self.seed, 21), ids[built], 0) < 0.6
        image[:, built] = np.where(red_roof, self._ROOFS[0][:, None], self._ROOFS[1][:, None])
        labels[built] = 3

        road = self._roads(rows, cols)
        image[:, road] = self._ROAD[:, None]
        labels[road] = 2

        noise = _gaussian_noise(_key(self.seed, 22), rows, cols)
        shade = 0.9 + 0.2 * _value_noise(_key(self.seed, 23), rows, cols, 6.0)
        image = image * shade[None] + 4.0 * noise[None]
        return _to_uint8(image), labels

    def _parcels(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        """Voronoi parcels of a jittered grid; each a crop with rows or a meadow."""
        size = self.parcel
        y = np.arange(rows.start, rows.stop, dtype=np.float64)
        x = np.arange(cols.start, cols.stop, dtype=np.float64)
        gy, gx = np.floor(y / size).astype(np.int64), np.floor(x / size).astype(np.int64)
        best = np.full((y.size, x.size), np.inf)
        second = np.full_like(best, np.inf)
        owner_y = np.zeros(best.shape, np.int64)
        owner_x = np.zeros(best.shape, np.int64)
        key = _key(self.seed, 30)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                cy, cx = (gy + dy + 1)[:, None], (gx + dx + 1)[None, :]
                sy = (cy - 1 + _hash_uniform(key, cy, cx)) * size
                sx = (cx - 1 + _hash_uniform(key + 1, cy, cx)) * size
                dist = np.hypot(y[:, None] - sy, x[None, :] - sx)
                closer = dist < best
                second = np.where(closer, best, np.minimum(second, dist))
                best = np.where(closer, dist, best)
                owner_y = np.where(closer, cy, owner_y)
                owner_x = np.where(closer, cx, owner_x)
        kind = _hash_uniform(key + 2, owner_y, owner_x)
        is_crop = kind < 0.65
        crop = np.minimum((kind / 0.65 * len(self._CROPS)).astype(np.int64), len(self._CROPS) - 1)
        angle = np.pi * _hash_uniform(key + 3, owner_y, owner_x)
        period = 5.0 + 5.0 * _hash_uniform(key + 4, owner_y, owner_x)
        furrows = np.sin(
            (np.cos(angle) * x[None, :] + np.sin(angle) * y[:, None]) * (2 * np.pi) / period
        )
        colour = np.where(
            is_crop[None], self._CROPS[crop].transpose(2, 0, 1), self._MEADOW[:, None, None]
        )
        colour = colour * (1.0 + 0.08 * furrows * is_crop)[None]
        hedge = (second - best) < 3.0
        colour[:, hedge] = self._HEDGE[:, None]
        labels = np.where(is_crop & ~hedge, 1, 0).astype(np.int32)
        return colour.astype(np.float32), labels

    def _roads(self, rows: slice, cols: slice) -> np.ndarray:
        """Two families of winding roads, one roughly horizontal, one roughly vertical."""
        road = np.zeros((rows.stop - rows.start, cols.stop - cols.start), bool)
        for family, (along, across) in enumerate(((cols, rows), (rows, cols))):
            key = _key(self.seed, 40 + family)
            t = np.arange(along.start, along.stop, dtype=np.float64)
            u = np.arange(across.start, across.stop, dtype=np.float64)
            spacing, amplitude, half_width = self.road_spacing, 40.0, 4.0
            reach = amplitude + half_width + 1
            first = int(np.floor((across.start - reach) / spacing))
            last = int(np.floor((across.stop + reach) / spacing))
            for stripe in range(max(first, 0), last + 1):
                params = _hash_uniform(key, np.full(5, stripe), np.arange(5))
                if params[0] > 0.8:
                    continue
                centre = (stripe + 0.15 + 0.7 * params[1]) * spacing + amplitude * params[2] * (
                    np.sin(2 * np.pi * t / (800 + 1500 * params[3]) + 2 * np.pi * params[4])
                )
                on = np.abs(u[:, None] - centre[None, :]) < half_width
                road |= on if family == 0 else on.T
        return road

    def _buildings(self, rows: slice, cols: slice) -> _Blobs:
        """Villages: rectangles packed where a smooth 'settlement' field is high, sharing a
        village-wide orientation, never in water."""
        key = _key(self.seed, 50)
        cells_y, cells_x = _cells_near(self.shape, rows, cols, reach=16)  # half-diagonal 12.8
        parts = []
        for cy in cells_y:
            for cx in cells_x:
                centre_y, centre_x = (cy + 0.5) * _CELL, (cx + 0.5) * _CELL
                settlement = _value_noise_at(key, np.array([centre_y]), np.array([centre_x]), 600.0)
                rate = max(0.0, float(settlement[0]) - 0.6) / 0.4 * _CELL * _CELL / 700
                rng = np.random.default_rng([key, cy, cx])
                count = min(int(rng.poisson(rate)), _PER_CELL - 1)
                y = (cy + rng.random(count)) * _CELL
                x = (cx + rng.random(count)) * _CELL
                village = _hash_uniform(key + 1, np.array([cy // 5]), np.array([cx // 5]))[0]
                parts.append(
                    _Blobs(
                        ids=_cell_ids(self.shape, cy, cx, count),
                        y=y,
                        x=x,
                        a=rng.uniform(4, 10, count),
                        b=rng.uniform(4, 8, count),
                        angle=np.pi * village + rng.normal(0, 0.05, count),
                        intensity=np.ones(count, np.float32),
                    )
                )
        houses = _Blobs.concat(parts)
        wet = _value_noise_at(_key(self.seed, 20), houses.y, houses.x, 700.0) > 0.75
        return houses.take(~wet)


# --------------------------------------------------------------------------------------------
# Objects


class _Blobs(NamedTuple):
    """Objects as columns: id, centre, semi-axes (pixels), orientation (radians), intensity."""

    ids: np.ndarray
    y: np.ndarray
    x: np.ndarray
    a: np.ndarray
    b: np.ndarray
    angle: np.ndarray
    intensity: np.ndarray

    def take(self, index: np.ndarray) -> _Blobs:
        return _Blobs(*(column[index] for column in self))

    @staticmethod
    def concat(parts: list[_Blobs]) -> _Blobs:
        if not parts:
            empty = np.zeros(0)
            return _Blobs(np.zeros(0, np.int64), *([empty] * 5), np.zeros(0, np.float32))
        return _Blobs(*(np.concatenate(columns) for columns in zip(*parts, strict=True)))


def _cluster_blobs(
    shape: tuple[int, int],
    key: int,
    rows: slice,
    cols: slice,
    density: float,
    radius: tuple[float, float],
) -> _Blobs:
    """Ellipses of a clustered, thinned Poisson process that may reach the region.

    Per cell: parents uniform in the cell, each with Poisson(0.8) (at most 3) neighbours placed
    around it at 0.85 to 1.1 times the sum of their radii, so that they touch, overlap a little
    or leave a thin gap. Density is modulated by a smooth field (scale 600 pixels). Then, as in a
    Matern hard-core process, an object is dropped when an object of smaller id lies closer than
    0.8 times the sum of their radii: no nucleus hides inside another. That decision depends only
    on objects within ``2 * radius[1]``, all of which are generated, so it is the same for every
    region.
    """
    from scipy.spatial import cKDTree

    # Distances from a centre: of its pixels and the blur margin (semi-axes reach 1.27 radius),
    # of a competing centre, and of its cell (neighbours sit up to 1.1 * 2 radii away).
    extent = 1.3 * radius[1] + 6
    clash = 1.6 * radius[1]
    spread = 2.2 * radius[1]
    cells_y, cells_x = _cells_near(shape, rows, cols, extent + clash + spread)
    centre_y = (np.asarray(cells_y, np.float64)[:, None] + 0.5) * _CELL
    centre_x = (np.asarray(cells_x, np.float64)[None, :] + 0.5) * _CELL
    crowding = 0.3 + 1.4 * _value_noise_at(key + 1, centre_y, centre_x, 600.0)
    parts = []
    for iy, cy in enumerate(cells_y):
        for ix, cx in enumerate(cells_x):
            rng = np.random.default_rng([key, cy, cx])
            mean = float(crowding[iy, ix]) * density * _CELL * _CELL / 1.8
            parents = min(int(rng.poisson(mean)), _PER_CELL - 1)
            children = np.minimum(rng.poisson(0.8, parents), 3)
            owner = np.repeat(np.arange(parents), children)[: _PER_CELL - 1 - parents]
            count = parents + owner.size
            mean_radius = rng.uniform(radius[0], radius[1], count)
            parent_y = (cy + rng.random(parents)) * _CELL
            parent_x = (cx + rng.random(parents)) * _CELL
            direction = rng.uniform(0, 2 * np.pi, owner.size)
            distance = rng.uniform(0.85, 1.1, owner.size) * (
                mean_radius[owner] + mean_radius[parents:]
            )
            elongation = rng.uniform(1.0, 1.6, count)
            parts.append(
                _Blobs(
                    ids=_cell_ids(shape, cy, cx, count),
                    y=np.concatenate([parent_y, parent_y[owner] + distance * np.sin(direction)]),
                    x=np.concatenate([parent_x, parent_x[owner] + distance * np.cos(direction)]),
                    a=mean_radius * np.sqrt(elongation),
                    b=mean_radius / np.sqrt(elongation),
                    angle=rng.uniform(0, np.pi, count),
                    intensity=rng.uniform(55.0, 200.0, count).astype(np.float32),
                )
            )
    blobs = _Blobs.concat(parts)
    if blobs.ids.size > 1:
        size = np.sqrt(blobs.a * blobs.b)
        pairs = cKDTree(np.stack([blobs.y, blobs.x], axis=1)).query_pairs(
            clash, output_type="ndarray"
        )
        first, second = pairs[:, 0], pairs[:, 1]
        distance = np.hypot(blobs.y[first] - blobs.y[second], blobs.x[first] - blobs.x[second])
        close = distance < 0.8 * (size[first] + size[second])
        later = np.where(blobs.ids[first] > blobs.ids[second], first, second)[close]
        keep = np.ones(blobs.ids.size, bool)
        keep[later] = False
        blobs = blobs.take(keep)
    near = (
        (blobs.y + extent >= rows.start)
        & (blobs.y - extent < rows.stop)
        & (blobs.x + extent >= cols.start)
        & (blobs.x - extent < cols.stop)
    )
    return blobs.take(near)


def _draw_nuclei(
    blobs: _Blobs, shape: tuple[int, int], rows: slice, cols: slice, *, blur: float
) -> tuple[np.ndarray, np.ndarray]:
    """Nucleus labels with a background gap between touching nuclei, and their brightness.

    A pixel with a 4-neighbour of another nucleus becomes background, so touching nuclei are
    parted by two background pixels: the separating background that the paper's weight map
    emphasises. Brightness is each nucleus's intensity over its (gapped) pixels, blurred by a
    Gaussian of ``blur`` pixels like an optical point-spread function: the gap shows as a dim
    seam. The region is drawn with a margin so that neither the gap nor the blur depends on
    where blocks are cut.

    Returns
    -------
    labels: int32 (h, w) nucleus ids, 0 = background
    brightness: float32 (h, w)
    """
    from scipy.ndimage import gaussian_filter

    margin = int(3.0 * blur + 0.5) + 1
    top, left = max(rows.start - margin, 0), max(cols.start - margin, 0)
    bottom, right = min(rows.stop + margin, shape[0]), min(cols.stop + margin, shape[1])
    labels, index = _draw(blobs, slice(top, bottom), slice(left, right))
    touching = np.zeros(labels.shape, bool)
    down = (labels[1:] != labels[:-1]) & (labels[1:] > 0) & (labels[:-1] > 0)
    across = (labels[:, 1:] != labels[:, :-1]) & (labels[:, 1:] > 0) & (labels[:, :-1] > 0)
    touching[1:] |= down
    touching[:-1] |= down
    touching[:, 1:] |= across
    touching[:, :-1] |= across
    labels[touching] = 0
    intensity = np.append(blobs.intensity, np.float32(0))  # index -1: background
    brightness = np.where(labels > 0, intensity[index], np.float32(0))
    brightness = gaussian_filter(brightness, blur, mode="nearest", truncate=3.0)
    crop = (slice(rows.start - top, rows.stop - top), slice(cols.start - left, cols.stop - left))
    return labels[crop], brightness[crop]


def _draw(
    blobs: _Blobs, rows: slice, cols: slice, *, shape: str = "ellipse"
) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise objects into a region.

    Every object is evaluated on a square stamp around its centre. A pixel belongs to the object
    it is most inside (smallest normalised radius; exact ties to a fixed object order), so
    overlapping objects split along a line.

    Returns
    -------
    labels: int32 (h, w) object ids, 0 outside every object
    index: int64 (h, w) position of the pixel's object in ``blobs``, -1 outside every object
    """
    height, width = rows.stop - rows.start, cols.stop - cols.start
    # Stamps come in a few sizes (multiples of 4) so that small objects cost little; a rotated
    # rectangle reaches as far as its corners.
    extent = np.hypot(blobs.a, blobs.b) if shape == "rectangle" else np.maximum(blobs.a, blobs.b)
    reach = 4 * np.ceil((extent + 1) / 4).astype(np.int64)
    near = (
        (blobs.y + reach >= rows.start)
        & (blobs.y - reach < rows.stop)
        & (blobs.x + reach >= cols.start)
        & (blobs.x - reach < cols.stop)
    )
    candidates = np.flatnonzero(near)
    parts = [
        _stamp(blobs, candidates[reach[candidates] == size], size, rows, cols, shape)
        for size in np.unique(reach[candidates])
    ]
    pixel = np.concatenate([p[0] for p in parts] + [np.zeros(0, np.int64)])
    radius = np.concatenate([p[1] for p in parts] + [np.zeros(0, np.float32)])
    owner = np.concatenate([p[2] for p in parts] + [np.zeros(0, np.int64)])
    # Positive float32 bit patterns order like the floats: one integer key sorts pixel, radius.
    order = np.argsort((pixel << 31) | radius.view(np.int32), kind="stable")
    pixel, owner = pixel[order], owner[order]
    first = np.ones(pixel.size, bool)
    first[1:] = pixel[1:] != pixel[:-1]
    index = np.full(height * width, -1, np.int64)
    index[pixel[first]] = owner[first]
    labels = np.append(blobs.ids, 0)[index].astype(np.int32)  # index -1: background
    return labels.reshape(height, width), index.reshape(height, width)


def _stamp(
    blobs: _Blobs, which: np.ndarray, reach: int, rows: slice, cols: slice, shape: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixels inside objects ``which`` of ``blobs``, on stamps of side ``2 * reach + 1``.

    Returns flat pixel index in the region (int64), normalised radius (float32; squared for
    ellipses, which orders alike) and object position in ``blobs`` (int64), one entry per pixel
    inside an object.
    """
    width = cols.stop - cols.start
    offsets = np.arange(-reach, reach + 1)
    centre_y, centre_x = blobs.y[which], blobs.x[which]
    row = np.rint(centre_y).astype(np.int64)[:, None] + offsets
    col = np.rint(centre_x).astype(np.int64)[:, None] + offsets
    dy = (row - centre_y[:, None]).astype(np.float32)
    dx = (col - centre_x[:, None]).astype(np.float32)
    cos = np.cos(blobs.angle[which]).astype(np.float32)[:, None]
    sin = np.sin(blobs.angle[which]).astype(np.float32)[:, None]
    a = blobs.a[which].astype(np.float32)[:, None]
    b = blobs.b[which].astype(np.float32)[:, None]
    # Rotated, scaled coordinates from per-object row and column terms (cheap broadcasts).
    u = (dx * (cos / a))[:, None, :] + (dy * (sin / a))[:, :, None]
    v = (dy * (cos / b))[:, :, None] - (dx * (sin / b))[:, None, :]
    if shape == "rectangle":
        radius = np.maximum(np.abs(u), np.abs(v))
    else:
        u *= u
        v *= v
        radius = np.add(u, v, out=u)
    row_in = (row >= rows.start) & (row < rows.stop)
    col_in = (col >= cols.start) & (col < cols.stop)
    inside = (radius < 1.0) & row_in[:, :, None] & col_in[:, None, :]
    obj, i, j = np.nonzero(inside)
    pixel = (row[obj, i] - rows.start) * width + (col[obj, j] - cols.start)
    return pixel, radius[inside], which[obj]


def _cells_near(
    shape: tuple[int, int], rows: slice, cols: slice, reach: float
) -> tuple[range, range]:
    """Object cells whose objects may reach the region (objects stay within ``reach`` of their
    cell)."""
    cells = (-(-shape[0] // _CELL), -(-shape[1] // _CELL))
    y0 = max(int((rows.start - reach) // _CELL), 0)
    y1 = min(int((rows.stop + reach) // _CELL), cells[0] - 1)
    x0 = max(int((cols.start - reach) // _CELL), 0)
    x1 = min(int((cols.stop + reach) // _CELL), cells[1] - 1)
    return range(y0, y1 + 1), range(x0, x1 + 1)


def _cell_ids(shape: tuple[int, int], cy: int, cx: int, count: int) -> np.ndarray:
    cells_x = -(-shape[1] // _CELL)
    return (cy * cells_x + cx) * _PER_CELL + 1 + np.arange(count, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Random fields of global coordinates


def _key(seed: int, stream: int) -> int:
    """A 63-bit key for one random stream of a scene."""
    return _splitmix(_splitmix(seed) ^ stream) >> 1


def _splitmix(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def _hash_uniform(key: int, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) float64 values, a hash of ``(key, iy, ix)`` (integers, broadcast)."""
    iy, ix = np.broadcast_arrays(np.asarray(iy), np.asarray(ix))
    with np.errstate(over="ignore"):
        h = iy.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        h ^= ix.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
        h ^= np.uint64(key & _MASK64)
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _smoothstep(t: np.ndarray) -> np.ndarray:
    return t * t * (3.0 - 2.0 * t)


def _value_noise(key: int, rows: slice, cols: slice, scale: float) -> np.ndarray:
    """Smooth noise in [0, 1) on the region's grid, float32 (h, w): hashed values on a lattice of
    spacing ``scale`` pixels, interpolated with smoothstep weights (separably, so it is cheap)."""
    ys = np.arange(rows.start, rows.stop, dtype=np.float64) / scale
    xs = np.arange(cols.start, cols.stop, dtype=np.float64) / scale
    y0, x0 = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
    ty = _smoothstep(ys - y0).astype(np.float32)
    tx = _smoothstep(xs - x0).astype(np.float32)
    lattice_y = np.arange(y0[0], y0[-1] + 2)
    lattice_x = np.arange(x0[0], x0[-1] + 2)
    lattice = _hash_uniform(key, lattice_y[:, None], lattice_x[None, :]).astype(np.float32)
    left = lattice[:, x0 - lattice_x[0]]
    along_x = left + (lattice[:, x0 - lattice_x[0] + 1] - left) * tx[None, :]
    top = along_x[y0 - lattice_y[0]]
    return top + (along_x[y0 - lattice_y[0] + 1] - top) * ty[:, None]


def _value_noise_at(key: int, y: np.ndarray, x: np.ndarray, scale: float) -> np.ndarray:
    """:func:`_value_noise` evaluated at arbitrary points, float64."""
    ys, xs = np.asarray(y, np.float64) / scale, np.asarray(x, np.float64) / scale
    y0, x0 = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
    ty, tx = _smoothstep(ys - y0), _smoothstep(xs - x0)
    top = _hash_uniform(key, y0, x0) * (1 - tx) + _hash_uniform(key, y0, x0 + 1) * tx
    bottom = _hash_uniform(key, y0 + 1, x0) * (1 - tx) + _hash_uniform(key, y0 + 1, x0 + 1) * tx
    return top * (1 - ty) + bottom * ty


def _gaussian_noise(key: int, rows: slice, cols: slice) -> np.ndarray:
    """Standard normal float32 (h, w) noise, assembled from fixed tiles of the plane."""
    tile = _NOISE_TILE
    noise = np.empty((rows.stop - rows.start, cols.stop - cols.start), np.float32)
    for ty in range(rows.start // tile, (rows.stop - 1) // tile + 1):
        for tx in range(cols.start // tile, (cols.stop - 1) // tile + 1):
            values = np.random.default_rng([key, ty, tx]).standard_normal(
                (tile, tile), dtype=np.float32
            )
            y0, y1 = max(rows.start, ty * tile), min(rows.stop, (ty + 1) * tile)
            x0, x1 = max(cols.start, tx * tile), min(cols.stop, (tx + 1) * tile)
            noise[y0 - rows.start : y1 - rows.start, x0 - cols.start : x1 - cols.start] = values[
                y0 - ty * tile : y1 - ty * tile, x0 - tx * tile : x1 - tx * tile
            ]
    return noise


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Validation


def _check_scene(shape: tuple[int, int], seed: int) -> None:
    if len(shape) != 2 or min(shape) < 1:
        raise InvalidParameter(f"scene shape must be (Y, X) with both >= 1, got {shape}")
    if seed < 0:
        raise InvalidParameter(f"seed must be >= 0, got {seed}")
    cells = -(-shape[0] // _CELL) * -(-shape[1] // _CELL)
    if cells * _PER_CELL >= 2**31:
        raise InvalidParameter(
            f"scene {shape} is too large for int32 instance labels: render it in parts"
        )


def _check_region(shape: tuple[int, int], rows: slice, cols: slice) -> tuple[slice, slice]:
    checked = []
    for axis, (region, length) in enumerate(zip((rows, cols), shape, strict=True)):
        start, stop, step = region.indices(length)
        if step != 1 or stop <= start or region.start is not None and region.start < 0:
            raise InvalidParameter(
                f"region {region} on axis {axis} must be a non-empty slice with step 1 inside "
                f"0..{length}"
            )
        checked.append(slice(start, stop))
    return checked[0], checked[1]
