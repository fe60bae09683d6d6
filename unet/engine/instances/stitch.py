"""Exact image-wide object ids from per-chunk labels: labelling one chunk, the equivalences
across chunk borders, and the numbering. Pure numpy (and scikit-image / SciPy); no Dask, no Zarr.

Chunk ``k`` (row-major) labels its own pixels ``1 .. n_k``: the 4-connected regions of one
label value, as :func:`skimage.measure.label` finds them. Its provisional ids are
``offset_k + 1 .. offset_k + n_k``, where ``offset_k`` counts the objects of the chunks before it.
Under 4-connectivity two regions of neighbouring chunks are one object exactly when a pixel of
each faces the other across the shared chunk edge with the same nonzero value (pixels meeting at a
chunk corner only touch diagonally, which connects nothing), so the outermost row or column of
each side of each chunk is all that the driver needs. The pairs found there are the edges of a
graph whose connected components are the objects spanning chunks; each keeps its smallest
provisional id and the others are dropped. The surviving ids are numbered ``1 .. N`` in order.
The numbering therefore depends on the mask alone, not on the order in which chunks finish: a
rerun, or a resumed run, numbers every object the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unet.errors import InvalidParameter

Index = tuple[int, int]

#: Provisional keys while the offsets are unknown: chunk (row-major) in the high bits, local id
#: in the low 32 bits (a chunk has fewer than 2**32 pixels).
_LOCAL_BITS = 32
_LOCAL_MASK = (1 << _LOCAL_BITS) - 1

#: Sides of a chunk: (name, neighbour's offset in the chunk grid, the neighbour's facing side).
SIDES = (
    ("top", (-1, 0), "bottom"),
    ("bottom", (1, 0), "top"),
    ("left", (0, -1), "right"),
    ("right", (0, 1), "left"),
)


@dataclass(frozen=True)
class Border:
    """The outermost pixels of a labelled chunk along one side.

    ids: uint32 (n,), local ids (0: background); values: uint8 (n,), the mask's label values
    """

    ids: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class ChunkLabels:
    """What labelling one chunk tells the driver: its object count and its four borders, never
    its pixels.

    Attributes
    ----------
    index: the chunk
    count: local objects, ids ``1 .. count``
    borders: ``{"top" | "bottom" | "left" | "right": Border}``
    """

    index: Index
    count: int
    borders: dict[str, Border]


def label_chunk(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The 4-connected regions of one label value of a chunk.

    Parameters
    ----------
    mask: uint8 (h, w) label values; 0 is background and gets no region

    Returns
    -------
    labels: uint32 (h, w), ids ``1 .. count`` in raster order of each region's first pixel
    count: the number of regions
    """
    from skimage.measure import label

    labels, count = label(mask, background=0, connectivity=1, return_num=True)
    return labels.astype(np.uint32, copy=False), int(count)


def region_values(labels: np.ndarray, mask: np.ndarray, count: int) -> np.ndarray:
    """uint8 (count + 1,): the label value of each local id (index 0: background, 0)."""
    values = np.zeros(count + 1, np.uint8)
    values[labels.ravel()] = mask.ravel()  # every pixel of a region has its region's value
    return values


def chunk_labels(index: Index, mask: np.ndarray) -> ChunkLabels:
    """Label chunk ``index`` (uint8 (h, w) ``mask``) and keep what the driver needs of it."""
    labels, count = label_chunk(mask)
    edges = {
        "top": np.s_[0, :],
        "bottom": np.s_[-1, :],
        "left": np.s_[:, 0],
        "right": np.s_[:, -1],
    }
    borders = {
        side: Border(labels[where].copy(), mask[where].astype(np.uint8, copy=True))
        for side, where in edges.items()
    }
    return ChunkLabels(index, count, borders)


@dataclass(frozen=True)
class ChunkMapping:
    """How the local ids of one chunk become image-wide ids.

    Attributes
    ----------
    base: the chunk's provisional offset less the ids dropped before the chunk: a kept local
        id ``l`` becomes ``base + l - (dropped local ids <= l)``
    dropped: uint32 (m,), sorted local ids merged into an object that a smaller id names
    targets: uint64 (m,), the image-wide id of each of ``dropped``
    """

    base: int
    dropped: np.ndarray
    targets: np.ndarray

    def lookup_table(self, count: int, dtype: np.dtype) -> np.ndarray:
        """``dtype`` (count + 1,): image-wide id of each local id, 0 for 0."""
        local = np.arange(count + 1, dtype=np.int64)
        table = self.base + local - np.searchsorted(self.dropped, local, side="right")
        table[self.dropped.astype(np.int64)] = self.targets.astype(np.int64)
        table[0] = 0
        return table.astype(dtype)


@dataclass(frozen=True)
class Numbering:
    """The image-wide ids of every chunk's objects.

    Attributes
    ----------
    counts, offsets: int64 (chunks,), local objects of each chunk (row-major) and the
        provisional ids before it
    dropped: int64 (m,), sorted provisional ids merged into a smaller one
    targets: int64 (m,), the image-wide id each of ``dropped`` takes
    spanning: int64 (s,), sorted image-wide ids of the objects that span several chunks
    total: objects in the image, ids ``1 .. total``
    """

    counts: np.ndarray
    offsets: np.ndarray
    dropped: np.ndarray
    targets: np.ndarray
    spanning: np.ndarray
    total: int

    @property
    def dtype(self) -> np.dtype:
        """uint32, or uint64 where the ids do not fit."""
        return np.dtype(np.uint32 if self.total <= np.iinfo(np.uint32).max else np.uint64)

    def chunk_mapping(self, flat: int) -> ChunkMapping:
        """The mapping of chunk number ``flat`` (row-major)."""
        offset, count = int(self.offsets[flat]), int(self.counts[flat])
        before = int(np.searchsorted(self.dropped, offset, side="right"))
        after = int(np.searchsorted(self.dropped, offset + count, side="right"))
        return ChunkMapping(
            base=offset - before,
            dropped=(self.dropped[before:after] - offset).astype(np.uint32),
            targets=self.targets[before:after].astype(np.uint64),
        )


class Stitcher:
    """Collects the chunks' :class:`ChunkLabels` in any order and numbers the objects.

    A border is kept only until the chunk across it arrives; then the pairs of regions facing
    each other are kept (one per pair of regions, not per pixel) and both borders are let go.
    """

    def __init__(self, counts: tuple[int, int]) -> None:
        self.grid = counts
        self._counts = np.full(counts[0] * counts[1], -1, np.int64)
        self._waiting: dict[tuple[Index, str], Border] = {}
        self._pairs: list[np.ndarray] = []

    def add(self, chunk: ChunkLabels) -> None:
        """Take one chunk's labels (each chunk exactly once)."""
        i, j = chunk.index
        flat = i * self.grid[1] + j
        if not (0 <= i < self.grid[0] and 0 <= j < self.grid[1]) or self._counts[flat] >= 0:
            raise InvalidParameter(
                f"chunk {chunk.index} is outside the {self.grid} chunk grid or was added twice"
            )
        self._counts[flat] = chunk.count
        for side, (di, dj), facing in SIDES:
            neighbour = (i + di, j + dj)
            if not (0 <= neighbour[0] < self.grid[0] and 0 <= neighbour[1] < self.grid[1]):
                continue
            theirs = self._waiting.pop((neighbour, facing), None)
            if theirs is None:
                self._waiting[(chunk.index, side)] = chunk.borders[side]
            else:
                self._pair(flat, chunk.borders[side], neighbour, theirs)

    def _pair(self, flat: int, ours: Border, neighbour: Index, theirs: Border) -> None:
        touching = (ours.values == theirs.values) & (ours.values != 0)
        if not touching.any():
            return
        other = neighbour[0] * self.grid[1] + neighbour[1]
        keys = np.stack(
            [
                (flat << _LOCAL_BITS) | ours.ids[touching].astype(np.int64),
                (other << _LOCAL_BITS) | theirs.ids[touching].astype(np.int64),
            ],
            axis=1,
        )
        self._pairs.append(np.unique(keys, axis=0))

    def numbering(self) -> Numbering:
        """The numbering, once every chunk was added."""
        missing = int((self._counts < 0).sum())
        if missing:
            raise InvalidParameter(f"{missing} chunks were not labelled: add every chunk first")
        offsets = np.concatenate([[0], np.cumsum(self._counts)[:-1]]).astype(np.int64)
        dropped = targets = spanning = np.zeros(0, np.int64)
        if self._pairs:
            from scipy.sparse import coo_matrix
            from scipy.sparse.csgraph import connected_components

            keys = np.concatenate(self._pairs)
            provisional = offsets[keys >> _LOCAL_BITS] + (keys & _LOCAL_MASK)
            nodes, inverse = np.unique(provisional, return_inverse=True)
            inverse = inverse.reshape(provisional.shape)
            graph = coo_matrix(
                (np.ones(len(inverse), np.int8), (inverse[:, 0], inverse[:, 1])),
                shape=(len(nodes), len(nodes)),
            )
            _, component = connected_components(graph, directed=False)
            smallest = np.full(component.max() + 1, np.iinfo(np.int64).max, np.int64)
            np.minimum.at(smallest, component, nodes)
            roots = smallest[component]
            merged = nodes != roots
            dropped = nodes[merged]  # sorted, as nodes are

            def final(ids: np.ndarray) -> np.ndarray:
                return ids - np.searchsorted(dropped, ids, side="right")

            targets = final(roots[merged])
            spanning = np.unique(final(smallest))
        return Numbering(
            counts=self._counts.copy(),
            offsets=offsets,
            dropped=dropped,
            targets=targets,
            spanning=spanning,
            total=int(self._counts.sum()) - len(dropped),
        )
