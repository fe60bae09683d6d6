"""The work of one output chunk, run inside a Dask worker.

A task carries a :class:`ChunkJob` (paths and settings, a few hundred bytes) and a chunk index.
It reads the chunk plus its halo straight from the input store, mirrored at the image border as
:func:`unet.predict.predict_array` mirrors, normalizes with the checkpoint's mean/std, infers,
writes exactly that one output chunk and only then marks it in the ledger. The model is loaded
once per worker process (cached by checkpoint digest), never shipped in the task graph.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from unet.engine.allocator import reuse_freed_memory
from unet.engine.ledger import mark_finished, open_ledger
from unet.errors import InputReadError, writing
from unet.io.codecs import use_fast_codecs
from unet.io.omezarr import MASK_NODATA
from unet.io.pyramid import write_chunk_levels
from unet.io.source import ImageSource
from unet.predict.labels import labels_from_logits, probabilities_from_logits
from unet.tiling import ChunkGrid, Geometry, Window, input_window, mirror_pad

MASK_PATH = "0"
PROBABILITIES_PATH = "probabilities"


@dataclass(frozen=True)
class ChunkJob:
    """Everything a worker needs for any chunk of one image; small and picklable."""

    source: ImageSource
    output: str
    checkpoint: str
    checkpoint_digest: str
    chunks: tuple[int, int]
    tile_size: int
    batch_size: int
    device: str
    precision: str
    probabilities: bool
    nodata: float | None
    torch_threads: int | None
    #: Pyramid levels each chunk writes itself (see unet.io.pyramid.chunk_levels).
    pyramid_levels: int = 0
    #: Run each task's chunks as a stream (True), one after the other (False), or as the
    #: worker's device says (None: see unet.engine.task.worker_device).
    stream: bool | None = None
    #: Chunks that --skip-background settled as class 0 in a mask whose fill value is another
    #: label (no-data): written as zeros without the model. ``numpy.packbits`` of a bool
    #: (chunks_y, chunks_x) grid, row-major; empty for none.
    background: bytes = b""

    @property
    def nodata_label(self) -> int:
        """The label of no-data pixels: :data:`~unet.io.omezarr.MASK_NODATA` with a no-data
        value (the mask's fill value then), else 0 (non-finite pixels of a float input)."""
        return MASK_NODATA if self.nodata is not None else 0

    @property
    def grid(self) -> ChunkGrid:
        """The output chunks."""
        return ChunkGrid(self.source.shape[1:], self.chunks)

    def is_background(self, index: tuple[int, int]) -> bool:
        """Whether chunk ``index`` is one of :attr:`background`."""
        if not self.background:
            return False
        flat = index[0] * self.grid.counts[1] + index[1]
        return bool(self.background[flat >> 3] >> (7 - (flat & 7)) & 1)

    def window(self, index: tuple[int, int], geometry: Geometry) -> Window:
        """The input window of output chunk ``index`` (see :func:`unet.tiling.input_window`)."""
        rows, cols = self.grid.bounds(index)
        return input_window(rows, cols, self.source.shape[1:], self.tile_size, geometry)


@dataclass(frozen=True)
class ChunkResult:
    """What a task tells the driver: small statistics, never pixels.

    ``class_counts`` leaves no-data pixels out; ``nodata_pixels`` counts them (label
    :data:`~unet.io.omezarr.MASK_NODATA`; always 0 for a run without a no-data value, whose
    non-finite pixels count as class 0).
    """

    index: tuple[int, int]
    class_counts: tuple[int, ...]
    seconds: float
    skipped: bool
    nodata_pixels: int = 0


def run_chunk(job: ChunkJob, index: tuple[int, int]) -> ChunkResult:
    """Segment output chunk ``index`` of ``job`` and record it as finished.

    Pixels equal to ``job.nodata`` in every channel, and pixels that are NaN or infinite in any
    channel, get ``job.nodata_label`` (:data:`~unet.io.omezarr.MASK_NODATA` with a no-data value,
    else 0); the model sees a non-finite pixel as 0 after normalization (the channel mean), so
    the result does not depend on the chunking. A chunk of such pixels only is skipped: it holds
    the mask's fill value, which is that label.

    The three stages, :func:`prepare_chunk` (host: read), :func:`infer_chunk` (the device) and
    :func:`finish_chunk` (host: write, then mark), run here one after the other; a GPU worker
    runs them as a stream over several chunks (:func:`unet.engine.stream.run_chunk_batch`).

    Raises
    ------
    InputReadError: the input window cannot be read or decoded; the chunk is not marked
    OutputWriteError: the chunk cannot be written (disk full, read-only); not marked either
    """
    started = time.perf_counter()
    checkpoint = worker_checkpoint(job)
    prepared = prepare_chunk(job, checkpoint, index)
    mask, logits = infer_chunk(job, checkpoint, prepared)
    return finish_chunk(job, prepared, mask, logits, started)


@dataclass(frozen=True)
class PreparedChunk:
    """One chunk read and ready for the device: its window's pixels and what the host knows.

    Attributes
    ----------
    index: the output chunk
    window: its input window
    image: (C, h, w) window pixels: raw (normalized on the device, see ``normalization``) or
        float32 normalized on the host; None when the chunk is skipped
    normalization: the checkpoint's ``(mean, std)`` when ``image`` is raw, else None
    nodata_pixels: bool (out_h, out_w), pixels that get the job's ``nodata_label`` whatever the
        model says; None when there are none
    num_labels: labels the mask can hold (2 for a one-class model)
    """

    index: tuple[int, int]
    window: Window
    image: np.ndarray | None
    normalization: tuple[np.ndarray, np.ndarray] | None
    nodata_pixels: np.ndarray | None
    num_labels: int
    background: bool = False

    @property
    def skipped(self) -> bool:
        """Nothing to infer: all of the chunk's pixels are no data (the fill value says it), or
        the chunk is background (class 0 everywhere)."""
        return self.image is None


def worker_checkpoint(job: ChunkJob):
    """Set up this worker process for ``job`` (malloc, codecs, torch threads) and return the
    job's checkpoint, loaded once per process."""
    reuse_freed_memory()  # a no-op after the first call; workers started by unet have it already
    use_fast_codecs()
    _use_threads(job.torch_threads)
    checkpoint = _checkpoint(job.checkpoint, job.checkpoint_digest, job.device)
    _freeze_long_lived_objects()
    return checkpoint


@functools.cache
def _freeze_long_lived_objects() -> None:
    """Exclude what this worker process holds once its model is loaded (modules, torch, the
    model) from Python's garbage collector, once.

    A stream allocates objects fast enough (Zarr's reads and writes) to set off a full
    collection every hundred chunks or so, and a full collection walks the whole heap of a
    process that imported torch: long enough to add to every chunk's share of the host time
    (benchmarks/README.md). The collection here takes a fraction of a second once, on the
    worker's first chunk, with the model's load.
    """
    gc.collect()
    gc.freeze()


def prepare_chunk(job: ChunkJob, checkpoint, index: tuple[int, int]) -> PreparedChunk:
    """Read chunk ``index``'s input window and find its no-data pixels: the host's work before
    the device.

    Integer inputs of :data:`unet.predict.step.DEVICE_NORMALIZED`'s dtypes stay raw and are
    normalized on the device; other inputs are normalized here, and their non-finite pixels set
    to 0 (the channel mean).

    Raises
    ------
    InputReadError: the input window cannot be read or decoded
    """
    from unet.predict.step import DEVICE_NORMALIZED

    geometry = checkpoint.model.geometry
    window = job.window(index, geometry)
    num_labels = max(checkpoint.model.num_classes, 2)
    if job.is_background(index):
        return PreparedChunk(index, window, None, None, None, num_labels, background=True)
    try:
        raw = read_window(job.source, window)
    except Exception as error:
        raise InputReadError(
            f"reading the input of chunk {index} failed ({type(error).__name__}: {error})"
        ) from error
    centre = window.centre(geometry.context)
    nodata_pixels = None
    if job.nodata is not None:
        nodata_pixels = np.all(raw[(slice(None), *centre)] == job.nodata, axis=0)
    if raw.dtype.name in DEVICE_NORMALIZED:
        image, normalization = raw, (checkpoint.mean, checkpoint.std)
    else:
        image, normalization = checkpoint.normalize(raw), None
        nonfinite = _nonfinite_pixels(image) if raw.dtype.kind == "f" else None
        if nonfinite is not None:
            image[:, nonfinite] = 0.0
            nodata_pixels = (
                nonfinite[centre] if nodata_pixels is None else nodata_pixels | nonfinite[centre]
            )
    if nodata_pixels is not None and nodata_pixels.all():
        image = None
    return PreparedChunk(index, window, image, normalization, nodata_pixels, num_labels)


def infer_chunk(
    job: ChunkJob, checkpoint, prepared: PreparedChunk
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The device's part of a chunk: ``(mask, logits)``, uint8 (h, w) and, with
    ``job.probabilities``, float32 (K, h, w) (else None); both None for a chunk of no data
    only, and zeros (no logits) for a background chunk."""
    if prepared.background:
        rows, cols = prepared.window.rows, prepared.window.cols
        return np.zeros((rows.stop - rows.start, cols.stop - cols.start), np.uint8), None
    if prepared.skipped:
        return None, None
    crop = prepared.window.crop()
    logits = None
    if job.probabilities:
        logits = _infer(job, checkpoint, prepared)[(slice(None), *crop)]
        mask = labels_from_logits(logits)
    else:
        mask = _infer(job, checkpoint, prepared, labels=True)[crop]
    if prepared.nodata_pixels is not None:
        mask[prepared.nodata_pixels] = job.nodata_label
    return mask, logits


def finish_chunk(
    job: ChunkJob,
    prepared: PreparedChunk,
    mask: np.ndarray | None,
    logits: np.ndarray | None,
    started: float,
) -> ChunkResult:
    """Write a chunk's mask (with its pyramid levels and probabilities) and only then mark it
    finished in the ledger; a skipped chunk (``mask`` None) is only marked.

    ``started``: ``time.perf_counter()`` when the chunk's work began (for its ``seconds``).

    Raises
    ------
    OutputWriteError: the chunk cannot be written (disk full, read-only); it is not marked
    """
    index, rows, cols = prepared.index, prepared.window.rows, prepared.window.cols
    arrays = _output_arrays(job.output, job.probabilities, job.pyramid_levels)
    if mask is None:
        with writing(f"chunk {index} of {job.output}"):
            mark_finished(arrays.ledger, index, arrays.ledger_files)
        counts = np.zeros(prepared.num_labels, np.int64)
        pixels = (rows.stop - rows.start) * (cols.stop - cols.start)
        nodata = pixels if job.nodata is not None else 0
        counts[0] = pixels - nodata
        seconds = time.perf_counter() - started
        return ChunkResult(index, tuple(counts.tolist()), seconds, True, nodata)
    with writing(f"chunk {index} of {job.output}"):
        try:
            write_chunk_levels(
                arrays.levels, mask, rows, cols, level0=arrays.mask, files=arrays.files
            )
            if arrays.probabilities is not None and logits is not None:
                arrays.probabilities[:, rows, cols] = probabilities_from_logits(logits)
            mark_finished(arrays.ledger, index, arrays.ledger_files)
        except BaseException:
            _erase_chunk(arrays, rows, cols)
            raise
    nodata = 0
    if job.nodata is not None and prepared.nodata_pixels is not None:
        nodata = int(np.count_nonzero(prepared.nodata_pixels))
    counts = class_counts(mask, prepared.num_labels, nodata)
    seconds = time.perf_counter() - started
    return ChunkResult(index, counts, seconds, prepared.background, nodata)


def _erase_chunk(arrays: OutputArrays, rows: slice, cols: slice) -> None:
    """Delete the files of an output chunk whose write failed, as far as that is possible.

    A level written before the failure keeps its new chunk, and zarrs writes a chunk file in
    place (the probabilities; the mask where chunk files do not apply), so a full disk leaves a
    partial or empty one behind. Writing the fill value deletes a chunk file instead (Zarr stores
    no chunk equal to it), which needs no space. Best effort: the chunk is unmarked and the
    rerun computes it anyway.
    """
    shape = (rows.stop - rows.start, cols.stop - cols.start)
    blank = np.full(shape, arrays.mask.fill_value, np.uint8)
    with contextlib.suppress(Exception):
        write_chunk_levels(arrays.levels, blank, rows, cols, level0=arrays.mask, files=arrays.files)
    if arrays.probabilities is not None:
        with contextlib.suppress(Exception):
            arrays.probabilities[:, rows, cols] = 0


def read_window(source: ImageSource, window: Window) -> np.ndarray:
    """The raw input of ``window``: (C, h, w) in the stored dtype, image pixels mirrored (numpy
    "reflect") wherever the window leaves the image.

    Only the part inside the image is read, through the source's cache of decoded chunks
    (:mod:`unet.io.chunkcache`); a window inside the image comes back without a copy.
    """
    block = source.read_cached(window.read_rows, window.read_cols)
    if window.pad_before == window.pad_after == (0, 0):
        return block
    return mirror_pad(block, window.pad_before, window.pad_after)


def class_counts(mask: np.ndarray, num_labels: int, nodata: int = 0) -> tuple[int, ...]:
    """Pixels per label of a uint8 mask holding labels ``0 .. num_labels-1``, and ``nodata``
    pixels of label :data:`~unet.io.omezarr.MASK_NODATA` that are left out.

    Two labels are counted with ``count_nonzero``, much faster than ``bincount`` on a 1024^2 mask.
    """
    if num_labels == 2:
        ones = int(np.count_nonzero(mask)) - nodata
        return (mask.size - nodata - ones, ones)
    return tuple(np.bincount(mask.ravel(), minlength=num_labels)[:num_labels].tolist())


def _nonfinite_pixels(image: np.ndarray) -> np.ndarray | None:
    """bool (h, w): pixels of a (C, h, w) image that are NaN or infinite in any channel; None
    when there are none."""
    pixels = ~np.isfinite(image).all(axis=0)
    return pixels if pixels.any() else None


def _infer(job: ChunkJob, checkpoint, prepared: PreparedChunk, labels: bool = False) -> np.ndarray:
    """float32 (K, h, w) logits, or uint8 (h, w) labels, of a prepared chunk's window (see
    :func:`unet.predict.predict_window`)."""
    from unet.predict.window import predict_window

    return predict_window(
        checkpoint.model,
        prepared.image,
        prepared.window.out_shape,
        tile_size=job.tile_size,
        batch_size=job.batch_size,
        device=_worker_device(job.device),
        precision=job.precision,
        labels=labels,
        normalization=prepared.normalization,
    )


@lru_cache(maxsize=2)
def _checkpoint(path: str, digest: str, device: str):
    """The checkpoint, loaded once per worker process (the digest keys the cache)."""
    from unet.network.checkpoint import load_checkpoint

    resolved = _worker_device(device)
    if resolved.startswith("cuda"):
        import torch

        # The chunks of an image share a handful of tile shapes: cuDNN times its algorithms
        # for each once and keeps the fastest.
        torch.backends.cudnn.benchmark = True
    return load_checkpoint(path, device=resolved)


def _use_threads(torch_threads: int | None) -> None:
    """Give this task's thread ``torch_threads`` intra-op threads.

    The thread count is per calling thread under OpenMP, and the Dask nanny starts workers with
    OMP_NUM_THREADS=1: set once in the thread that loaded the model, a task running on another
    executor thread ran its convolutions on one core (measured slower per 1024^2 chunk with the
    bundled model: benchmarks/README.md).
    """
    import torch

    if torch_threads and torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)


@dataclass(frozen=True)
class OutputArrays:
    """The arrays a chunk task writes, opened once per worker process: the mask's level 0 and
    the levels its chunks write, the probabilities, the ledger, and their chunk files where
    they are local (:class:`unet.io.chunkfiles.ChunkFiles`; else None: through zarr)."""

    mask: Any
    levels: list[Any]
    probabilities: Any
    ledger: Any
    files: list[Any]
    ledger_files: Any


@lru_cache(maxsize=4)
def _output_arrays(output: str, probabilities: bool, pyramid_levels: int) -> OutputArrays:
    import zarr

    from unet.io.chunkfiles import ChunkFiles

    group = zarr.open_group(output, mode="r+")
    mask = group[MASK_PATH]
    levels = [group[str(k)] for k in range(1, pyramid_levels + 1)]
    ledger = open_ledger(group)
    return OutputArrays(
        mask=mask,
        levels=levels,
        probabilities=group[PROBABILITIES_PATH] if probabilities else None,
        ledger=ledger,
        files=[ChunkFiles.of(array) for array in (mask, *levels)],
        ledger_files=ChunkFiles.of(ledger),
    )


def _worker_device(device: str) -> str:
    """``auto`` resolved in the worker: each GPU worker sees only its own GPU (see unet.engine.cluster)."""
    from unet.predict.device import resolve_device

    return str(resolve_device(device))
