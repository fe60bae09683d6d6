"""The one home of a chunk's geometry: its bounds, the input window it needs, the mirror pads at
the image border and where its pixels sit in the window's output.

The engine's chunk tasks, in-memory inference, background detection and export all take their
regions from here, so that every layer cuts the image the same way.

A region of output pixels ``rows x cols`` is computed by tiles whose origins lie on the pooling
grid (multiples of ``2**depth``): its window therefore starts ``context`` pixels above and left of
the grid point at or before ``(rows.start, cols.start)``. The part of the window inside the image
is read; the rest is mirrored (:func:`unet.tiling.mirror.mirror_pad`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unet.errors import InvalidParameter
from unet.tiling.geometry import Geometry
from unet.tiling.tiles import window_shape

Index = tuple[int, int]


@dataclass(frozen=True)
class ChunkGrid:
    """The chunks of a ``(H, W)`` image cut into ``(cy, cx)`` chunks (the last ones smaller)."""

    shape: tuple[int, int]
    chunks: tuple[int, int]

    def __post_init__(self) -> None:
        if min(self.chunks) < 1 or min(self.shape) < 1:
            raise InvalidParameter(
                f"chunks {self.chunks} of image {self.shape}: both need sides of at least 1"
            )

    @property
    def counts(self) -> tuple[int, int]:
        """Chunks along Y and X: ``(ceil(H / cy), ceil(W / cx))``."""
        (height, width), (ch, cw) = self.shape, self.chunks
        return -(-height // ch), -(-width // cw)

    @property
    def total(self) -> int:
        return self.counts[0] * self.counts[1]

    def bounds(self, index: Index) -> tuple[slice, slice]:
        """Rows and columns of chunk ``index = (i, j)``."""
        (height, width), (ch, cw) = self.shape, self.chunks
        y, x = index[0] * ch, index[1] * cw
        return slice(y, min(y + ch, height)), slice(x, min(x + cw, width))

    def indices(self) -> list[Index]:
        """Every chunk index, row-major."""
        rows, cols = self.counts
        return [(i, j) for i in range(rows) for j in range(cols)]

    def regions(self) -> list[tuple[slice, slice]]:
        """The bounds of every chunk, row-major."""
        return [self.bounds(index) for index in self.indices()]


@dataclass(frozen=True)
class Window:
    """The input window of a region of output pixels.

    Attributes
    ----------
    rows, cols: the output pixels, in image coordinates
    read_rows, read_cols: the part of the window inside the image: what is read
    pad_before, pad_after: pixels mirrored above/left and below/right of what is read
        (``(rows, cols)`` each)
    offset: where output pixel ``(rows.start, cols.start)`` sits in the window's output, which
        starts on the pooling grid at or before it
    out_shape: output pixels the window's tiles compute, ``offset`` plus the region
    """

    rows: slice
    cols: slice
    read_rows: slice
    read_cols: slice
    pad_before: tuple[int, int]
    pad_after: tuple[int, int]
    offset: tuple[int, int]
    out_shape: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        """``(h, w)`` of the whole window, mirrored parts included."""
        return (
            self.pad_before[0] + self.read_rows.stop - self.read_rows.start + self.pad_after[0],
            self.pad_before[1] + self.read_cols.stop - self.read_cols.start + self.pad_after[1],
        )

    def centre(self, context: int) -> tuple[slice, slice]:
        """Where the region's own pixels sit in the window, for a network of that context."""
        top, left = context + self.offset[0], context + self.offset[1]
        height, width = self.rows.stop - self.rows.start, self.cols.stop - self.cols.start
        return slice(top, top + height), slice(left, left + width)

    def crop(self) -> tuple[slice, slice]:
        """The region's pixels in the window's ``out_shape`` output."""
        return slice(self.offset[0], None), slice(self.offset[1], None)


def input_window(
    rows: slice, cols: slice, image_shape: tuple[int, int], tile_size: int, geometry: Geometry
) -> Window:
    """The window that tiles of ``tile_size`` need to compute output pixels ``rows x cols`` of an
    image of ``image_shape``, in padded coordinates on the pooling grid.

    Raises
    ------
    InvalidParameter: the region is empty or leaves the image
    """
    height, width = image_shape
    if not (0 <= rows.start < rows.stop <= height and 0 <= cols.start < cols.stop <= width):
        raise InvalidParameter(
            f"region rows {rows.start}..{rows.stop}, cols {cols.start}..{cols.stop} is empty or "
            f"outside the {height}x{width} image"
        )
    offset = (rows.start % geometry.align, cols.start % geometry.align)
    out_shape = (rows.stop - rows.start + offset[0], cols.stop - cols.start + offset[1])
    need_h, need_w = window_shape(out_shape, tile_size, geometry)
    top = rows.start - offset[0] - geometry.context
    left = cols.start - offset[1] - geometry.context
    read_rows = slice(max(top, 0), min(top + need_h, height))
    read_cols = slice(max(left, 0), min(left + need_w, width))
    return Window(
        rows=rows,
        cols=cols,
        read_rows=read_rows,
        read_cols=read_cols,
        pad_before=(read_rows.start - top, read_cols.start - left),
        pad_after=(top + need_h - read_rows.stop, left + need_w - read_cols.stop),
        offset=offset,
        out_shape=out_shape,
    )


def cells_in_chunks(cells: np.ndarray, cell: tuple[int, int], grid: ChunkGrid) -> np.ndarray:
    """int64 (chunks_y, chunks_x): how many True cells of a coarser grid each chunk overlaps.

    ``cells``: bool (h, w), cell ``(i, j)`` covering image rows ``i*cell[0] .. (i+1)*cell[0]-1``
    and the same columns (e.g. stored input chunks, or pixels of a low-resolution view).
    Summed-area arithmetic: the time and memory go with the two grids, not with a Python
    object per chunk.
    """
    sums = np.zeros((cells.shape[0] + 1, cells.shape[1] + 1), np.int64)
    sums[1:, 1:] = np.cumsum(np.cumsum(cells, axis=0, dtype=np.int64), axis=1)
    (height, width), (ch, cw) = grid.shape, grid.chunks
    first_rows = np.arange(0, height, ch)
    first_cols = np.arange(0, width, cw)
    top = np.minimum(first_rows // cell[0], cells.shape[0])[:, None]
    bottom = np.minimum(-(-np.minimum(first_rows + ch, height) // cell[0]), cells.shape[0])[:, None]
    left = np.minimum(first_cols // cell[1], cells.shape[1])[None, :]
    right = np.minimum(-(-np.minimum(first_cols + cw, width) // cell[1]), cells.shape[1])[None, :]
    return sums[bottom, right] - sums[top, right] - sums[bottom, left] + sums[top, left]


#: Output chunks per strip of :func:`strip_order`.
STRIP_WIDTH = 4


def strip_order(indices: list[Index], width: int = STRIP_WIDTH) -> list[Index]:
    """Chunk indices ``(i, j)`` ordered by vertical strips of ``width`` chunk columns, row-major
    within each strip.

    Consecutive chunks then share most of their input: the window of chunk ``(i, j)`` overlaps
    input chunk rows ``i-1 .. i+1`` and columns ``j-1 .. j+1``, so in this order a cache of
    ``3 * (width + 2)`` decoded input chunks decodes ``(width + 2) / width`` of them per output
    chunk, however wide the image (row-major order would need two whole rows of the image).
    """
    if not indices:
        return []
    rows, cols = np.asarray(indices, dtype=np.int64).reshape(-1, 2).T
    return [(int(i), int(j)) for i, j in _in_strips(rows, cols, width).tolist()]


def strip_order_array(todo: np.ndarray, width: int = STRIP_WIDTH) -> np.ndarray:
    """``int32 (n, 2)``: the chunks where ``todo`` (bool (chunks_y, chunks_x)) is True, in
    :func:`strip_order`, without a Python object per chunk."""
    rows, cols = np.nonzero(todo)
    return _in_strips(rows, cols, width).astype(np.int32)


def _in_strips(rows: np.ndarray, cols: np.ndarray, width: int) -> np.ndarray:
    """(n, 2) ``(row, col)`` pairs sorted by strip of ``width`` columns, then row, then column."""
    order = np.lexsort((cols, rows, cols // width))
    return np.stack([rows[order], cols[order]], axis=1)
