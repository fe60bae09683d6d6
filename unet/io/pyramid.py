"""Multiscale pyramids for OME-Zarr 0.5 images and label masks.

Level ``k + 1`` halves level ``k`` along Y and X (``ceil``), so level ``k`` covers level-0 pixels
in blocks of ``2**k``. Each level is computed from the previous one by a pool of threads: each
job reads a block of level ``k`` (``JOB_SIDE`` pixels a side, or one ``(2 cy, 2 cx)`` block of
larger chunks) and writes whole ``(cy, cx)`` chunks of level ``k + 1``, so no two jobs write the
same chunk and memory stays at a few blocks (``THREADS`` at once). (Zarr's
codecs release the GIL. Dask arrays did the same before, but importing ``dask.array`` pulled in
SciPy and took a noticeable time, inside the first segmentation of every process.)
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Literal

import numpy as np

from unet.errors import InvalidParameter, UnsupportedInput
from unet.io.locations import resolve_location
from unet.io.omezarr import LEVEL0, set_multiscales

if TYPE_CHECKING:
    import zarr

    from unet.io.chunkfiles import ChunkFiles

Reduction = Literal["mean", "nearest"]


#: Smallest chunk side of a level that level-0 chunks write themselves (see chunk_levels).
MIN_CHUNK_LEVEL_SIDE = 256


#: Side, in source pixels, of the blocks that build_pyramid halves at once (whole chunks at
#: least): 1024^2 is 1 MiB of uint8 labels, and a mean of it needs about 1.3 MiB more.
JOB_SIDE = 1024
#: Blocks halved at once: memory stays a few blocks whatever the machine's cores.
THREADS = 2


def chunk_levels(
    shape: tuple[int, int],
    chunks: tuple[int, int],
    max_side: int = 1024,
    levels_wanted: int | None = None,
) -> int:
    """How many levels above 0 a mask's level-0 chunks can write themselves, as they are made.

    Level ``k`` gets chunks of ``(cy >> k, cx >> k)``: level-0 chunk ``(i, j)`` then covers
    exactly chunk ``(i, j)`` of level ``k``, so the task that writes one writes the other, with
    no two tasks touching one chunk. That holds while ``2**k`` divides the chunk sides; levels
    stop once a chunk side would fall under ``MIN_CHUNK_LEVEL_SIDE`` or the previous level fits
    in ``max_side`` (as :func:`build_pyramid` stops), or, with ``levels_wanted``, once that many
    levels (level 0 included) are reached. ``build_pyramid(..., keep_levels=n)`` adds the rest.
    """
    height, width = shape
    levels = 0

    def wanted(level: int) -> bool:
        if levels_wanted is not None:
            return level + 1 < levels_wanted
        return max(math.ceil(height / 2**level), math.ceil(width / 2**level)) > max_side

    while wanted(levels):
        k = levels + 1
        if any(c % 2**k or c >> k < MIN_CHUNK_LEVEL_SIDE for c in chunks):
            break
        levels = k
    return levels


def create_chunk_levels(group: zarr.Group, levels: int) -> list[zarr.Array]:
    """Create levels ``"1"`` .. ``str(levels)`` of a mask group, empty, chunked as
    :func:`chunk_levels` says; return them, level 1 first."""
    source = group[LEVEL0]
    arrays = []
    for k in range(1, levels + 1):
        arrays.append(
            group.create_array(
                str(k),
                shape=tuple(math.ceil(n / 2**k) for n in source.shape),
                dtype=source.dtype,
                chunks=tuple(c >> k for c in source.chunks),
                compressors=source.compressors,
                fill_value=source.fill_value,
                dimension_names=source.metadata.dimension_names,
            )
        )
    return arrays


def write_chunk_levels(
    arrays: list[zarr.Array],
    mask: np.ndarray,
    rows: slice,
    cols: slice,
    level0: zarr.Array | None = None,
    files: list[ChunkFiles | None] | None = None,
) -> None:
    """Write one level-0 chunk's ``[::2**k, ::2**k]`` into level ``k`` of ``arrays`` (level 1
    first), as ``build_pyramid(reduction="nearest")`` would; and the chunk itself into
    ``level0`` when given.

    mask: (h, w), the chunk at ``rows``/``cols`` of level 0, whose starts are chunk origins
    files: the :class:`~unet.io.chunkfiles.ChunkFiles` of ``level0`` and ``arrays`` (in that
        order), when every one has them: each level's part is then one chunk file, written
        atomically without zarr's machinery (a third of the CPU of the same writes through
        zarr; benchmarks/README.md)

    Otherwise all the writes go to Zarr in one call, so their codecs run at once: a 1024^2 mask
    chunk and two levels took less time than one after the other (2 CPU cores).
    """
    import asyncio

    from zarr.core.sync import sync

    if files is not None and all(f is not None for f in files):
        parts = [mask[:: 2**k, :: 2**k] for k in range(len(files))]
        for k, (chunk_files, part) in enumerate(zip(files, parts, strict=True)):
            step = 2**k
            top, left = rows.start // step, cols.start // step
            rows_k, cols_k = chunk_files.chunks[-2:]
            if top % rows_k or left % cols_k or part.shape[0] > rows_k or part.shape[1] > cols_k:
                break  # not one chunk of that level: through zarr below
        else:
            for k, (chunk_files, part) in enumerate(zip(files, parts, strict=True)):
                step = 2**k
                rows_k, cols_k = chunk_files.chunks[-2:]
                chunk_files.write(
                    (rows.start // step // rows_k, cols.start // step // cols_k), part
                )
            return
    writes = []
    if level0 is not None:
        writes.append(level0.async_array.setitem((rows, cols), mask))
    for k, array in enumerate(arrays, start=1):
        step = 2**k
        part = mask[::step, ::step]
        top, left = rows.start // step, cols.start // step
        region = (slice(top, top + part.shape[0]), slice(left, left + part.shape[1]))
        writes.append(array.async_array.setitem(region, part))

    async def write_all() -> list[BaseException | None]:
        # Every write ends before this returns, failed or not; the first failure is raised.
        return await asyncio.gather(*writes, return_exceptions=True)

    for outcome in sync(write_all()):
        if isinstance(outcome, BaseException):
            raise outcome


def build_pyramid(
    url: str | os.PathLike[str],
    *,
    reduction: Reduction = "mean",
    max_side: int = 1024,
    keep_levels: int = 0,
    levels: int | None = None,
) -> list[str]:
    """Add levels ``"1"``, ``"2"``, ... to an OME-Zarr 0.5 image until the longer side fits.

    Parameters
    ----------
    url: path or URL of an OME-Zarr 0.5 image group with level ``"0"``
    reduction: ``"mean"`` of each 2x2 block for images (same dtype, integers rounded half to
        even; a missing row or column at an odd border is left out of the mean), or
        ``"nearest"`` (``[::2, ::2]``), which keeps label values exact for masks
    max_side: stop once ``max(Y, X) <= max_side``; no level is added if level 0 already fits
    keep_levels: levels ``"1"`` .. ``str(keep_levels)`` exist already, complete (written by
        :func:`write_chunk_levels`): keep them and go on from the last
    levels: build exactly this many levels, level 0 included, whatever ``max_side`` says (a
        label image inside an image has as many levels as the image)

    Returns
    -------
    The level paths, ``"0"`` first. Existing levels other than ``"0"`` are replaced and the
    multiscales metadata is rewritten.
    """
    pyramid = PyramidLevels(
        url, reduction=reduction, max_side=max_side, keep_levels=keep_levels, levels=levels
    )
    pyramid.build()
    return pyramid.finish()


class PyramidLevels:
    """The levels :func:`build_pyramid` adds above ``keep_levels``: created empty at once, then
    filled block by block, in any order that halves a block only once its source is complete.

    Each level ``new[n]`` (path ``keep_levels + 1 + n``) is cut into blocks of whole chunks,
    ``job_side`` source pixels a side (or one chunk, when chunks are larger): a block is the
    unit of work, read from the level below it in one call and written in one call.

    Parameters: as :func:`build_pyramid` (``levels``: exactly that many levels in all, level 0
    included), and ``job_side``, the side of a block in source pixels. Existing levels above ``keep_levels`` are removed.
    """

    def __init__(
        self,
        url: str | os.PathLike[str],
        *,
        reduction: Reduction = "mean",
        max_side: int = 1024,
        keep_levels: int = 0,
        levels: int | None = None,
        job_side: int = JOB_SIDE,
    ) -> None:
        import zarr

        if reduction not in ("mean", "nearest"):
            raise InvalidParameter(f"reduction {reduction!r} is not known: use 'mean' or 'nearest'")
        if not isinstance(max_side, int) or max_side < 1:
            raise InvalidParameter(f"max_side must be a positive integer, got {max_side!r}")
        if levels is not None and (not isinstance(levels, int) or levels < 1):
            raise InvalidParameter(f"levels must be a positive integer, got {levels!r}")
        location = resolve_location(url)
        group = zarr.open_group(store=location, mode="r+")
        ome = group.attrs.asdict().get("ome")
        if group.metadata.zarr_format != 3 or not ome or LEVEL0 not in group.array_keys():
            raise UnsupportedInput(
                f"{location} is not an OME-Zarr 0.5 image group with a level '0' array: "
                "pyramids are built for images written by unet (create_image, ingest, segment)"
            )
        _remove_levels(group, ome, keep_levels)
        self.group, self.reduction, self.keep_levels = group, reduction, keep_levels
        self.job_side = job_side
        #: Level arrays from level ``keep_levels`` (the last kept) up, one per new level above.
        self.arrays = [group[str(keep_levels) if keep_levels else LEVEL0]]
        while (
            keep_levels + len(self.arrays) < levels
            if levels is not None
            else max(self.arrays[-1].shape[-2:]) > max_side
        ):
            self.arrays.append(
                _create_half(self.arrays[-1], group, str(keep_levels + len(self.arrays)))
            )

    @classmethod
    def existing(
        cls,
        url: str | os.PathLike[str],
        *,
        reduction: Reduction,
        keep_levels: int,
        count: int,
        job_side: int = JOB_SIDE,
    ) -> PyramidLevels:
        """The ``count`` levels above ``keep_levels`` that a :class:`PyramidLevels` of the same
        arguments created, opened as they are (for another process to fill some of their
        blocks): nothing is removed or created."""
        import zarr

        group = zarr.open_group(store=resolve_location(url), mode="r+")
        pyramid = cls.__new__(cls)
        pyramid.group, pyramid.reduction, pyramid.keep_levels = group, reduction, keep_levels
        pyramid.job_side = job_side
        pyramid.arrays = [
            group[str(level) if level else LEVEL0]
            for level in range(keep_levels, keep_levels + count + 1)
        ]
        return pyramid

    @property
    def count(self) -> int:
        """New levels."""
        return len(self.arrays) - 1

    def block_shape(self, new: int) -> tuple[int, int]:
        """(rows, cols) of the blocks of new level ``new`` (0 first), in its own pixels."""
        chunks = self.arrays[new + 1].chunks[-2:]
        span = max(1, self.job_side // (2 * max(chunks)))
        return chunks[0] * span, chunks[1] * span

    def blocks(self, new: int) -> list[tuple[int, int]]:
        """Origins of the blocks of new level ``new``, row-major."""
        rows, cols = self.block_shape(new)
        height, width = self.arrays[new + 1].shape[-2:]
        return [(top, left) for top in range(0, height, rows) for left in range(0, width, cols)]

    def halve(self, new: int, origin: tuple[int, int]) -> None:
        """Fill block ``origin`` of new level ``new`` from the level below it, which must be
        complete there."""
        rows, cols = self.block_shape(new)
        source, target = self.arrays[new], self.arrays[new + 1]
        top, left = origin
        block = source[..., 2 * top : 2 * (top + rows), 2 * left : 2 * (left + cols)]
        target[..., top : top + rows, left : left + cols] = reduce_block(block, self.reduction)

    def build(self, done: set[tuple[int, tuple[int, int]]] = frozenset()) -> None:
        """Halve every block not in ``done`` (``(new level, origin)`` pairs), level by level, each
        level's blocks in a pool of threads (each writes its own chunks: no lock is needed)."""
        from concurrent.futures import ThreadPoolExecutor

        for new in range(self.count):
            origins = [origin for origin in self.blocks(new) if (new, origin) not in done]
            if not origins:
                continue
            with ThreadPoolExecutor(max_workers=min(len(origins), THREADS)) as pool:
                for _ in pool.map(lambda origin, new=new: self.halve(new, origin), origins):
                    pass  # re-raises the first failure

    def finish(self) -> list[str]:
        """Write the multiscales metadata of every level; return the level paths, ``"0"``
        first."""
        paths = [LEVEL0, *(str(k) for k in range(1, self.keep_levels + self.count + 1))]
        set_multiscales(self.group, paths, [2**k for k in range(len(paths))], method=self.reduction)
        return paths


def reduce_block(block: np.ndarray, reduction: Reduction) -> np.ndarray:
    """Halve the last two axes of one block.

    Parameters
    ----------
    block: (..., h, w), any integer or float dtype
    reduction: ``"nearest"`` takes ``[..., ::2, ::2]``; ``"mean"`` averages each 2x2 block
        (edge rows/columns repeated where ``h`` or ``w`` is odd, which averages only the
        pixels present) and rounds integers half to even

    Returns
    -------
    (..., ceil(h / 2), ceil(w / 2)), the input dtype
    """
    if reduction == "nearest":
        return block[..., ::2, ::2]
    height, width = block.shape[-2:]
    if height % 2 or width % 2:
        pad = [(0, 0)] * (block.ndim - 2) + [(0, height % 2), (0, width % 2)]
        block = np.pad(block, pad, mode="edge")
    # float32 holds every 2x2 sum of 8- and 16-bit values exactly; wider types need float64.
    exact_in_float32 = block.dtype.itemsize <= 2 or block.dtype == np.float32
    total = block[..., ::2, ::2].astype(np.float32 if exact_in_float32 else np.float64)
    # Summing the four strided views keeps the working memory at a quarter of the block.
    total += block[..., 1::2, ::2]
    total += block[..., ::2, 1::2]
    total += block[..., 1::2, 1::2]
    total *= 0.25
    if block.dtype.kind in "ui":
        np.rint(total, out=total)
    return total.astype(block.dtype, copy=False)


def _remove_levels(group: zarr.Group, ome: dict, keep_levels: int = 0) -> None:
    """Delete the arrays of existing levels above ``keep_levels``, listed or numbered."""
    listed = {
        dataset.get("path")
        for multiscale in ome.get("multiscales", [])
        for dataset in multiscale.get("datasets", [])
    }
    existing = set(group.array_keys())
    for path in sorted(existing & (listed | {k for k in existing if k.isdigit()})):
        if path != LEVEL0 and not (path.isdigit() and int(path) <= keep_levels):
            del group[path]


def _create_half(source: zarr.Array, group: zarr.Group, path: str) -> zarr.Array:
    """Create level ``path``, empty: half of ``source`` along Y and X (``ceil``), chunked as
    ``source`` (smaller where the level is)."""
    height, width = source.shape[-2:]
    shape = (*source.shape[:-2], math.ceil(height / 2), math.ceil(width / 2))
    chunks = tuple(min(c, n) for c, n in zip(source.chunks, shape, strict=True))
    return group.create_array(
        path,
        shape=shape,
        dtype=source.dtype,
        chunks=chunks,
        compressors=source.compressors,
        fill_value=source.fill_value,
        dimension_names=source.metadata.dimension_names,
    )
