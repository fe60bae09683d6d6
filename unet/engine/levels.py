"""The mask's pyramid levels above those its chunks write, built by the driver while the run
goes on.

Chunk tasks write the levels whose chunks a level-0 chunk covers exactly
(:func:`unet.io.pyramid.chunk_levels`); the levels above need several chunks' results, and
:func:`unet.engine.output.finish_output` used to build them all once the last chunk was written:
with a GPU computing, that was the run's tail (a 16384^2 mask's last two levels took a
noticeable share of the whole run on 2 CPU cores). :class:`UpperLevels` halves each block of those
levels as soon as the chunks beneath it are finished, in one thread beside the run, so that
finishing is little more than writing the metadata.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from unet.tiling import ChunkGrid

Block = tuple[int, tuple[int, int]]  # (new level, origin in that level's pixels)

#: Side of a block in source pixels: half of build_pyramid's, so that the blocks the last chunks
#: complete, which are halved after the run, are small (a block is read and written in one call
#: each, and smaller ones cost more Zarr calls in all, but beside the run).
BLOCK_SIDE = 1024


class UpperLevels:
    """Levels above ``keep_levels`` of the mask at ``output``, filled block by block as chunks
    finish (:meth:`chunk_done`) and completed by :meth:`finish`.

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
        self.halved: set[Block] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="unet-levels")
        self._futures: list[Future[None]] = []
        self._closing = False
        # What each block waits for: level-0 chunks beneath it (first new level), or the blocks
        # of the level below whose pixels it halves.
        self._waiting: dict[Block, int] = {}
        self._parents: dict[object, list[Block]] = {}
        scale = 2 ** (keep_levels + 1)
        for new in range(self.levels.count):
            rows, cols = self.levels.block_shape(new)
            for origin in self.levels.blocks(new):
                block = (new, origin)
                if new == 0:
                    below = _cells(origin, (rows, cols), scale, grid.chunks, grid.counts)
                else:
                    below = [
                        (new - 1, child)
                        for child in self.levels.blocks(new - 1)
                        if _overlap(child, self.levels.block_shape(new - 1), origin, (rows, cols))
                    ]
                self._waiting[block] = len(below)
                for item in below:
                    self._parents.setdefault(item, []).append(block)
        for index in zip(*np.nonzero(done), strict=True):
            self.chunk_done((int(index[0]), int(index[1])))

    def chunk_done(self, index: tuple[int, int]) -> None:
        """Level-0 chunk ``index`` is written (or needs no writing): halve what it completes."""
        self._release(self._parents.get(index, []))

    def finish(self) -> list[str]:
        """Wait for the blocks under way, halve any left, write the multiscales metadata;
        return the level paths."""
        self.close()
        for future in self._futures:
            if not future.cancelled():
                future.result()  # the first failure is raised
        self.levels.build(done=self.halved)
        return self.levels.finish()

    def close(self) -> None:
        """Stop: blocks not started are dropped (:meth:`finish` halves them), the one under way
        ends first."""
        with self._lock:
            self._closing = True
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _release(self, blocks: list[Block]) -> None:
        ready = []
        with self._lock:
            for block in blocks:
                self._waiting[block] -= 1
                if self._waiting[block] == 0:
                    ready.append(block)
            if self._closing:
                return
        for block in ready:
            self._futures.append(self._pool.submit(self._halve, block))

    def _halve(self, block: Block) -> None:
        self.levels.halve(*block)
        with self._lock:
            self.halved.add(block)
        self._release(self._parents.get(block, []))


def _cells(
    origin: tuple[int, int],
    shape: tuple[int, int],
    scale: int,
    chunks: tuple[int, int],
    counts: tuple[int, int],
) -> list[tuple[int, int]]:
    """Level-0 chunks beneath a block at ``origin`` of ``shape`` in a level ``scale`` times
    smaller."""
    (top, left), (rows, cols), (ch, cw) = origin, shape, chunks
    first_row, first_col = top * scale // ch, left * scale // cw
    last_row = min(-(-(top + rows) * scale // ch), counts[0])
    last_col = min(-(-(left + cols) * scale // cw), counts[1])
    return [(i, j) for i in range(first_row, last_row) for j in range(first_col, last_col)]


def _overlap(
    child: tuple[int, int],
    child_shape: tuple[int, int],
    origin: tuple[int, int],
    shape: tuple[int, int],
) -> bool:
    """Whether a block of the level below (``child``, in its pixels) lies under the source of a
    block at ``origin`` (in its level's pixels, twice as coarse)."""
    (ct, cl), (ch, cw), (top, left), (rows, cols) = child, child_shape, origin, shape
    return (
        ct < 2 * (top + rows)
        and 2 * top < ct + ch
        and cl < 2 * (left + cols)
        and 2 * left < cl + cw
    )
