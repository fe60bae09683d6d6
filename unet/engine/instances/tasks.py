"""The instance pass's work on one chunk, run inside a Dask worker: label it (first round), then
label it again and write its image-wide ids (second round).

Both rounds read the finished mask chunk from the store; the second labels it again rather than
keeping the first round's labels anywhere, since labelling is deterministic and costs about as
much as a write and a read of the uint32 labels would. Each task writes exactly one chunk of the
instance image (and of its pyramid levels that the chunks write), so no two tasks touch one chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from unet.engine.instances.objects import ObjectStats, chunk_stats
from unet.engine.instances.stitch import (
    ChunkLabels,
    ChunkMapping,
    Index,
    chunk_labels,
    label_chunk,
    region_values,
)
from unet.errors import writing
from unet.io.codecs import use_fast_codecs
from unet.io.pyramid import write_chunk_levels
from unet.io.source import ImageSource
from unet.tiling import ChunkGrid


@dataclass(frozen=True)
class InstanceJob:
    """Everything a worker needs for any chunk of the pass; small and picklable.

    mask: the class mask's level 0; instances: the instance image's store (level 0 at ``"0"``
    and the ``pyramid_levels`` levels that the chunks write, chunked as ``chunks``)
    """

    mask: ImageSource
    instances: str
    chunks: tuple[int, int]
    pyramid_levels: int = 0
    #: The mask's no-data label (no object there), or None when it has none.
    nodata: int | None = None
    #: Names this pass: the workers' cached instance arrays are opened anew for each pass,
    #: since a rerun may have replaced the store at the same location.
    token: str = ""

    @property
    def grid(self) -> ChunkGrid:
        return ChunkGrid(self.mask.shape[1:], self.chunks)


@dataclass(frozen=True)
class RelabelItem:
    """One chunk of the second round: its index and its :class:`ChunkMapping`."""

    index: Index
    mapping: ChunkMapping


def label_task(job: InstanceJob, index: Index) -> ChunkLabels:
    """First round: label chunk ``index`` of the mask; its count and borders for the driver."""
    use_fast_codecs()
    return chunk_labels(index, _read_mask(job, index))


def relabel_task(job: InstanceJob, item: RelabelItem) -> ObjectStats:
    """Second round: write chunk ``item.index`` of the instance image; its objects' stats.

    Raises
    ------
    OutputWriteError: the chunk cannot be written (disk full, read-only)
    """
    use_fast_codecs()
    mask = _read_mask(job, item.index)
    labels, count = label_chunk(mask)
    level0, levels = _instance_arrays(job.instances, job.pyramid_levels, job.token)
    ids = item.mapping.lookup_table(count, level0.dtype)
    rows, cols = job.grid.bounds(item.index)
    with writing(f"chunk {item.index} of {job.instances}"):
        write_chunk_levels(levels, ids[labels], rows, cols, level0=level0)
    values = region_values(labels, mask, count)
    return chunk_stats(labels, count, values, ids, (rows.start, cols.start))


def _read_mask(job: InstanceJob, index: Index) -> np.ndarray:
    """uint8 (h, w): chunk ``index`` of the class mask, its no-data pixels as background (0)."""
    rows, cols = job.grid.bounds(index)
    mask = np.asarray(job.mask.read(rows, cols)[0])
    if job.nodata is not None:
        mask = np.where(mask == job.nodata, np.uint8(0), mask)
    return mask


@lru_cache(maxsize=4)
def _instance_arrays(instances: str, pyramid_levels: int, token: str):
    import zarr

    group = zarr.open_group(instances, mode="r+")
    return group["0"], [group[str(k)] for k in range(1, pyramid_levels + 1)]
