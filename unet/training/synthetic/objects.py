"""Objects of the scenes: Poisson processes of blobs per fixed cell of the plane, drawn as
small stamps; overlapping objects are split pixel by pixel in favour of the object the pixel is
most inside."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from unet.errors import InvalidParameter
from unet.training.synthetic.noise import value_noise_at

#: Cell side of the object processes; objects of a cell are numbered within it.
CELL = 128


#: Objects kept per cell at most; instance id = cell index * PER_CELL + k + 1.
PER_CELL = 256


class Blobs(NamedTuple):
    """Objects as columns: id, centre, semi-axes (pixels), orientation (radians), intensity."""

    ids: np.ndarray
    y: np.ndarray
    x: np.ndarray
    a: np.ndarray
    b: np.ndarray
    angle: np.ndarray
    intensity: np.ndarray

    def take(self, index: np.ndarray) -> Blobs:
        return Blobs(*(column[index] for column in self))

    @staticmethod
    def concat(parts: list[Blobs]) -> Blobs:
        if not parts:
            empty = np.zeros(0)
            return Blobs(np.zeros(0, np.int64), *([empty] * 5), np.zeros(0, np.float32))
        return Blobs(*(np.concatenate(columns) for columns in zip(*parts, strict=True)))


def cluster_blobs(
    shape: tuple[int, int],
    key: int,
    rows: slice,
    cols: slice,
    density: float,
    radius: tuple[float, float],
) -> Blobs:
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
    cells_y, cells_x = cells_near(shape, rows, cols, extent + clash + spread)
    centre_y = (np.asarray(cells_y, np.float64)[:, None] + 0.5) * CELL
    centre_x = (np.asarray(cells_x, np.float64)[None, :] + 0.5) * CELL
    crowding = 0.3 + 1.4 * value_noise_at(key + 1, centre_y, centre_x, 600.0)
    parts = []
    for iy, cy in enumerate(cells_y):
        for ix, cx in enumerate(cells_x):
            rng = np.random.default_rng([key, cy, cx])
            mean = float(crowding[iy, ix]) * density * CELL * CELL / 1.8
            parents = min(int(rng.poisson(mean)), PER_CELL - 1)
            children = np.minimum(rng.poisson(0.8, parents), 3)
            owner = np.repeat(np.arange(parents), children)[: PER_CELL - 1 - parents]
            count = parents + owner.size
            mean_radius = rng.uniform(radius[0], radius[1], count)
            parent_y = (cy + rng.random(parents)) * CELL
            parent_x = (cx + rng.random(parents)) * CELL
            direction = rng.uniform(0, 2 * np.pi, owner.size)
            distance = rng.uniform(0.85, 1.1, owner.size) * (
                mean_radius[owner] + mean_radius[parents:]
            )
            elongation = rng.uniform(1.0, 1.6, count)
            parts.append(
                Blobs(
                    ids=cell_ids(shape, cy, cx, count),
                    y=np.concatenate([parent_y, parent_y[owner] + distance * np.sin(direction)]),
                    x=np.concatenate([parent_x, parent_x[owner] + distance * np.cos(direction)]),
                    a=mean_radius * np.sqrt(elongation),
                    b=mean_radius / np.sqrt(elongation),
                    angle=rng.uniform(0, np.pi, count),
                    intensity=rng.uniform(55.0, 200.0, count).astype(np.float32),
                )
            )
    blobs = Blobs.concat(parts)
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


def draw_nuclei(
    blobs: Blobs, shape: tuple[int, int], rows: slice, cols: slice, *, blur: float
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
    labels, index = draw(blobs, slice(top, bottom), slice(left, right))
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


def draw(
    blobs: Blobs, rows: slice, cols: slice, *, shape: str = "ellipse"
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
        stamp(blobs, candidates[reach[candidates] == size], size, rows, cols, shape)
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


def stamp(
    blobs: Blobs, which: np.ndarray, reach: int, rows: slice, cols: slice, shape: str
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


def cells_near(
    shape: tuple[int, int], rows: slice, cols: slice, reach: float
) -> tuple[range, range]:
    """Object cells whose objects may reach the region (objects stay within ``reach`` of their
    cell)."""
    cells = (-(-shape[0] // CELL), -(-shape[1] // CELL))
    y0 = max(int((rows.start - reach) // CELL), 0)
    y1 = min(int((rows.stop + reach) // CELL), cells[0] - 1)
    x0 = max(int((cols.start - reach) // CELL), 0)
    x1 = min(int((cols.stop + reach) // CELL), cells[1] - 1)
    return range(y0, y1 + 1), range(x0, x1 + 1)


def cell_ids(shape: tuple[int, int], cy: int, cx: int, count: int) -> np.ndarray:
    cells_x = -(-shape[1] // CELL)
    return (cy * cells_x + cx) * PER_CELL + 1 + np.arange(count, dtype=np.int64)


def check_scene(shape: tuple[int, int], seed: int) -> None:
    if len(shape) != 2 or min(shape) < 1:
        raise InvalidParameter(f"scene shape must be (Y, X) with both >= 1, got {shape}")
    if seed < 0:
        raise InvalidParameter(f"seed must be >= 0, got {seed}")
    cells = -(-shape[0] // CELL) * -(-shape[1] // CELL)
    if cells * PER_CELL >= 2**31:
        raise InvalidParameter(
            f"scene {shape} is too large for int32 instance labels: render it in parts"
        )


def check_region(shape: tuple[int, int], rows: slice, cols: slice) -> tuple[slice, slice]:
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
