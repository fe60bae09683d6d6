"""Decoded input chunks, kept for the neighbouring windows that read them again.

The window of one output chunk is the chunk plus its halo, so it overlaps the 3 x 3 input chunks
around it: read straight from the store, every input chunk is decoded up to 9 times, once for each
window that touches it (13 of the 29 ms a 1024^2 chunk spent outside the forward pass on 2 CPU
cores). A :class:`ChunkCache` decodes each stored chunk once and keeps the most recently used
ones; visited in :func:`unet.tiling.strip_order`, a window finds all but one row of its chunks
already decoded.

Thread-safe: the threads of a worker share one cache (a chunk two threads miss at once is
decoded twice, never stored inconsistently).
"""

from __future__ import annotations

import mmap
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from unet.io.source import ImageSource

#: Memory a cache may hold, and the output chunks' worth of stored chunks it holds at most
#: (3 chunk rows of a strip of 4 output chunks and its 2 neighbours, see
#: unet.tiling.STRIP_WIDTH; a sharded input's output chunk is a shard of several stored chunks).
CACHE_BYTES = 64 * 2**20
CACHE_CHUNKS = 18


class ChunkCache:
    """Windows of ``source`` read through a least-recently-used cache of whole stored chunks.

    Parameters
    ----------
    source: the image; its stored (inner) chunks are the unit of caching
    cell: ``(rows, cols)`` of a stored chunk
    max_bytes, max_chunks: the cache holds at most this many bytes and chunks; a chunk larger
        than ``max_bytes / 2`` is not cached, and windows are then read straight from the store
    """

    def __init__(
        self,
        source: ImageSource,
        cell: tuple[int, int],
        *,
        max_bytes: int = CACHE_BYTES,
        max_chunks: int = CACHE_CHUNKS,
    ) -> None:
        self.source = source
        self.cell = cell
        channels = source.shape[0]
        cell_bytes = channels * cell[0] * cell[1] * np.dtype(source.dtype).itemsize
        self.capacity = min(max_chunks, max_bytes // max(cell_bytes, 1))
        self.decoded = 0  # stored chunks decoded so far (misses)
        self._chunks: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        """The same as ``source.read(rows, cols)``: (C, h, w) in the stored dtype.

        ``rows`` and ``cols`` are ``slice(start, stop)`` with integer bounds within the image.
        """
        if self.capacity < 2:
            return self.source.read(rows, cols)
        ch, cw = self.cell
        top, bottom, left, right = rows.start, rows.stop, cols.start, cols.stop
        out = np.empty(
            (self.source.shape[0], bottom - top, right - left), dtype=np.dtype(self.source.dtype)
        )
        for i in range(top // ch, -(-bottom // ch)):
            for j in range(left // cw, -(-right // cw)):
                block = self._chunk(i, j)
                y0, y1 = max(top, i * ch), min(bottom, (i + 1) * ch)
                x0, x1 = max(left, j * cw), min(right, (j + 1) * cw)
                out[:, y0 - top : y1 - top, x0 - left : x1 - left] = block[
                    :, y0 - i * ch : y1 - i * ch, x0 - j * cw : x1 - j * cw
                ]
        return out

    def _chunk(self, i: int, j: int) -> np.ndarray:
        """Stored chunk ``(i, j)``, (C, ch, cw) or smaller at the image's bottom/right edge."""
        with self._lock:
            block = self._chunks.get((i, j))
            if block is not None:
                self._chunks.move_to_end((i, j))
                return block
        (ch, cw), (_, height, width) = self.cell, self.source.shape
        block = self.source.read(
            slice(i * ch, min((i + 1) * ch, height)), slice(j * cw, min((j + 1) * cw, width))
        )
        block = _off_heap(block)
        with self._lock:
            self.decoded += 1
            self._chunks[(i, j)] = block
            while len(self._chunks) > self.capacity:
                self._chunks.popitem(last=False)
        return block


def _off_heap(block: np.ndarray) -> np.ndarray:
    """A copy of ``block`` in its own anonymous memory map, unmapped when the copy is freed.

    Cached chunks live across many forward passes: in malloc's heap they would sit between the
    activations freed after each pass and split that space, so the next pass grew the heap
    (unet.engine.allocator keeps a process's heap, so every such hole stays resident).
    """
    buffer = mmap.mmap(-1, max(block.nbytes, 1))
    copy = np.frombuffer(buffer, dtype=block.dtype, count=block.size).reshape(block.shape)
    copy[...] = block
    return copy
