"""Decoded input chunks, kept for the neighbouring windows that read them again.

The window of one output chunk is the chunk plus its halo, so it overlaps the 3 x 3 input chunks
around it: read straight from the store, every input chunk is decoded up to 9 times, once for each
window that touches it (a large part of the time a 1024^2 chunk spent outside the forward pass
on 2 CPU cores). A :class:`ChunkCache` decodes each stored chunk once and keeps the most recently
used ones; visited in :func:`unet.tiling.strip_order`, a window finds all but one row of its chunks
already decoded.

Thread-safe: the threads of a worker share one cache; a chunk that several threads miss at once
is decoded by one of them while the others wait for it.
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
#: Evicted chunks kept to decode into (see ChunkCache._recycle).
FREE_BLOCKS = 4


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
        self._cell_bytes = channels * cell[0] * cell[1] * np.dtype(source.dtype).itemsize
        self.capacity = min(max_chunks, max_bytes // max(self._cell_bytes, 1))
        self.decoded = 0  # stored chunks decoded so far (misses)
        self._chunks: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._free: list[np.ndarray] = []  # evicted whole-cell blocks, decoded into again
        self._loading: dict[tuple[int, int], threading.Event] = {}  # chunks being decoded
        self._lock = threading.Lock()

    def grow(self, max_chunks: int, max_bytes: int) -> None:
        """Hold up to ``max_chunks`` stored chunks within ``max_bytes`` from now on, if that is
        more than the cache holds already (a cache never shrinks)."""
        with self._lock:
            self.capacity = max(self.capacity, min(max_chunks, max_bytes // self._cell_bytes))

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
                y0, y1 = max(top, i * ch), min(bottom, (i + 1) * ch)
                x0, x1 = max(left, j * cw), min(right, (j + 1) * cw)
                self._copy(
                    i,
                    j,
                    out[:, y0 - top : y1 - top, x0 - left : x1 - left],
                    (slice(None), slice(y0 - i * ch, y1 - i * ch), slice(x0 - j * cw, x1 - j * cw)),
                )
        return out

    def _copy(self, i: int, j: int, target: np.ndarray, part: tuple[slice, ...]) -> None:
        """Copy ``part`` of stored chunk ``(i, j)`` into ``target``, decoding it if missing.

        Copies happen under the lock, while the chunk is in the cache: an evicted chunk's memory
        is decoded into again (see :meth:`_decode`), so a chunk is read only while cached.
        """
        while True:
            with self._lock:
                block = self._chunks.get((i, j))
                if block is not None:
                    self._chunks.move_to_end((i, j))
                    target[...] = block[part]
                    return
                loading = self._loading.get((i, j))
                if loading is None:
                    self._loading[(i, j)] = threading.Event()
                    break
            # Another thread is decoding this chunk: wait for it rather than decode it twice
            # (windows read ahead side by side share a row of chunks).
            loading.wait()
        try:
            block = self._decode(i, j)
        finally:
            with self._lock:
                self._loading.pop((i, j)).set()
        with self._lock:
            self.decoded += 1
            cached = self._chunks.get((i, j))
            if cached is None:
                self._chunks[(i, j)] = cached = block
                while len(self._chunks) > self.capacity:
                    self._recycle(self._chunks.popitem(last=False)[1])
            else:
                self._recycle(block)
            target[...] = cached[part]

    def _decode(self, i: int, j: int) -> np.ndarray:
        """Stored chunk ``(i, j)``, (C, ch, cw) or smaller at the image's bottom/right edge,
        decoded into the memory of an evicted chunk of the same size, or into a new map."""
        (ch, cw), (channels, height, width) = self.cell, self.source.shape
        rows = slice(i * ch, min((i + 1) * ch, height))
        cols = slice(j * cw, min((j + 1) * cw, width))
        shape = (channels, rows.stop - rows.start, cols.stop - cols.start)
        with self._lock:
            buffer = self._free.pop() if self._free and shape == self._free[-1].shape else None
        if buffer is None:
            buffer = _off_heap(shape, np.dtype(self.source.dtype))
        if (ch, cw) == self.source.stored_cell():
            return self.source.read_stored_chunk(i, j, out=buffer)
        return self.source.read(rows, cols, out=buffer)

    def _recycle(self, block: np.ndarray) -> None:
        """Keep a whole-cell block that left the cache, to decode the next chunk into (called
        under the lock). Decoding into memory already mapped saves its page faults: a fresh
        1024^2 map cost as much CPU a chunk as decoding it."""
        if block.shape[1:] == self.cell and len(self._free) < FREE_BLOCKS:
            self._free.append(block)


def _off_heap(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An empty array of ``shape`` in its own anonymous memory map, unmapped when freed.

    Cached chunks live across many forward passes: in malloc's heap they would sit between the
    activations freed after each pass and split that space, so the next pass grew the heap
    (unet.engine.allocator keeps a process's heap, so every such hole stays resident).
    """
    size = int(np.prod(shape)) * dtype.itemsize
    buffer = mmap.mmap(-1, max(size, 1))
    return np.frombuffer(buffer, dtype=dtype, count=int(np.prod(shape))).reshape(shape)
