"""The mask's pyramid levels above those its chunks write, halved on the workers block by block
while the run goes on.

Chunk tasks write the levels whose chunks a level-0 chunk covers exactly
(:func:`unet.io.pyramid.chunk_levels`); the levels above need several chunks' results, and
:func:`unet.engine.output.finish_output` used to build them all once the last chunk was written:
with a GPU computing, that was the run's tail (a 16384^2 mask's last two levels took a
noticeable share of the whole run on 2 CPU cores). :class:`UpperLevels` keeps, on the driver,
which blocks of those levels have their source complete; the driver hands each such block to a
worker (:func:`halve_blocks`), so that finishing is little more than writing the metadata, and
the driver itself reads and writes no pixels.

The bookkeeping is arithmetic on the block grids of each level, one counter per block: its memory
goes with the blocks (a block is at least ``BLOCK_SIDE`` source pixels a side), never with the
chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from unet.tiling import ChunkGrid

Block = tuple[int, tuple[int, int]]  # (new level, origin in that level's pixels)

#: Side of a block in source pixels: half of build_pyramid's, so that the blocks the last chunks
#: complete, which are halved after the run, are small (a block is read and written in one call
#: each, and smaller ones cost more Zarr calls in all, but beside the run).
BLOCK_SIDE = 1024
#: Chunks released at once (a resumed run's finished chunks in batches): the arrays of a batch
#: take a few MiB, whatever the chunk count.
RELEASE_BATCH = 2**16


@dataclass(frozen=True)
class LevelSpec:
    """Where the upper levels are, for a worker to open them (:func:`halve_blocks`)."""

    output: str
    keep_levels: int
    count: int
    job_side: int

    def open(self):
        from unet.io.pyramid import PyramidLevels

        return PyramidLevels.existing(
            self.output,
            reduction="nearest",
            keep_levels=self.keep_levels,
            count=self.count,
            job_side=self.job_side,
        )


def halve_blocks(spec: LevelSpec, blocks: list[Block]) -> list[Block]:
    """Halve ``blocks`` (in order; their sources complete) of the levels of ``spec``; run on a
    worker. Returns them."""
    levels = spec.open()
    for new, origin in blocks:
        levels.halve(new, origin)
    return blocks


def build_rest(spec: LevelSpec, done: set[Block]) -> None:
    """Halve every block of ``spec``'s levels not in ``done``, level by level; run on a worker
    once every chunk is written."""
    spec.open().build(done=done)


class UpperLevels:
    """Levels above ``keep_levels`` of the mask at ``output``: created empty here, their blocks
    made ready as the chunks beneath them finish (:meth:`chunks_done`), halved elsewhere
    (:meth:`take_ready`, then :meth:`blocks_done`), and completed by :meth:`finish`.

    Parameters
    ----------
    output: the mask group (OME-Zarr)
    keep_levels: the levels the chunks write (``"1"`` .. ``str(keep_levels)``)
    grid: the output chunks
    done: bool (chunks_y, chunks_x), chunks finished already (resumed or skipped)
    levels: exactly this many levels in all, level 0 included (None: until the side fits 1024)
    """

    def __init__(
        self,
        output: str,
        keep_levels: int,
        grid: ChunkGrid,
        done: np.ndarray,
        levels: int | None = None,
    ) -> None:
        from unet.io.pyramid import PyramidLevels

        self.levels = PyramidLevels(
            output,
            reduction="nearest",
            keep_levels=keep_levels,
            levels=levels,
            job_side=BLOCK_SIDE,
        )
        self.spec = LevelSpec(output, keep_levels, self.levels.count, BLOCK_SIDE)
        self.halved: set[Block] = set()
        self._ready: list[Block] = []
        self._shapes = [self.levels.block_shape(new) for new in range(self.levels.count)]
        # Per level and axis: the blocks each child (a level-0 chunk for the first new level, a
        # block of the level below for the others) lies under, as (first, last) arrays.
        self._parents: list[list[tuple[np.ndarray, np.ndarray]]] = []
        self._waiting: list[np.ndarray] = []
        scale = 2 ** (keep_levels + 1)
        for new in range(self.levels.count):
            rows, cols = self._shapes[new]
            if new == 0:
                sizes, extents = grid.chunks, grid.shape
                spans = (rows * scale, cols * scale)
            else:
                sizes = self._shapes[new - 1]
                extents = tuple(self.levels.arrays[new].shape[-2:])
                spans = (2 * rows, 2 * cols)
            height, width = self.levels.arrays[new + 1].shape[-2:]
            counts = (-(-height // rows), -(-width // cols))
            axes = [
                _parent_ranges(size, extent, span)
                for size, extent, span in zip(sizes, extents, spans, strict=True)
            ]
            self._parents.append(axes)
            per_axis = [
                np.bincount(
                    np.concatenate([np.arange(a, b + 1) for a, b in zip(*ranges, strict=True)]),
                    minlength=count,
                )[:count]
                for ranges, count in zip(axes, counts, strict=True)
            ]
            self._waiting.append(np.outer(per_axis[0], per_axis[1]).astype(np.int64))
        if self.levels.count:  # in bands of rows: a band's indices take a few MiB at most
            step = max(1, RELEASE_BATCH // max(done.shape[1], 1))
            for row in range(0, done.shape[0], step):
                found = np.argwhere(done[row : row + step])
                found[:, 0] += row
                self.chunks_done(found)

    @property
    def count(self) -> int:
        """New levels."""
        return self.levels.count

    def chunks_done(self, indices: np.ndarray) -> None:
        """Level-0 chunks ``indices`` (int (n, 2)) are written, or need no writing."""
        indices = np.asarray(indices)
        if self.levels.count:
            for first in range(0, len(indices), RELEASE_BATCH):  # memory flat in the chunks
                self._release(0, indices[first : first + RELEASE_BATCH])

    def take_ready(self, at_least: int = 1) -> list[Block]:
        """The blocks whose source is complete and that were not handed out yet, once there are
        ``at_least`` of them (none until then)."""
        if len(self._ready) < at_least:
            return []
        ready, self._ready = self._ready, []
        return ready

    def blocks_done(self, blocks: list[Block]) -> None:
        """``blocks`` are halved: the blocks above them may be ready."""
        self.halved.update(blocks)
        for new, origin in blocks:
            if new + 1 < self.levels.count:
                rows, cols = self._shapes[new]
                self._release(new + 1, np.asarray([[origin[0] // rows, origin[1] // cols]]))

    def finish(self, client: object | None = None) -> list[str]:
        """Halve every block not halved yet (on ``client``'s workers, else here), write the
        multiscales metadata; return the level paths."""
        if self.levels.count:
            if client is not None:
                client.submit(build_rest, self.spec, set(self.halved), pure=False).result()
            else:
                self.levels.build(done=self.halved)
        return self.levels.finish()

    def _release(self, new: int, children: np.ndarray) -> None:
        """Children at grid places ``children`` (int (n, 2)) of new level ``new``'s sources are
        complete. Arithmetic on arrays: a resumed run releases all its finished chunks at once."""
        (row_first, row_last), (col_first, col_last) = self._parents[new]
        waiting = self._waiting[new]
        rows, cols = self._shapes[new]
        i, j = children[:, 0], children[:, 1]
        one = (row_first[i] == row_last[i]) & (col_first[j] == col_last[j])
        touched = [np.stack([row_first[i[one]], col_first[j[one]]], axis=1)]
        np.subtract.at(waiting, (touched[0][:, 0], touched[0][:, 1]), 1)
        for k in np.nonzero(~one)[0]:  # a child under several blocks (levels cut short)
            for bi in range(row_first[i[k]], row_last[i[k]] + 1):
                for bj in range(col_first[j[k]], col_last[j[k]] + 1):
                    waiting[bi, bj] -= 1
                    touched.append(np.array([[bi, bj]]))
        places = np.unique(np.concatenate(touched), axis=0)
        for bi, bj in places[waiting[places[:, 0], places[:, 1]] == 0].tolist():
            self._ready.append((new, (int(bi) * rows, int(bj) * cols)))


def _parent_ranges(size: int, extent: int, span: int) -> tuple[np.ndarray, np.ndarray]:
    """Along one axis: children of ``size`` pixels covering ``extent``, and parents covering
    ``span`` of the same pixels each; the first and last parent of every child."""
    starts = np.arange(0, extent, size)
    stops = np.minimum(starts + size, extent)
    return starts // span, (stops - 1) // span
