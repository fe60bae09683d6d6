"""A GPU worker's chunks as a stream: reading the next windows, the device's work on this one
and writing the last ones overlap.

One Dask task carries several output chunks (:func:`run_chunk_batch`); a Dask task costs the
worker and the scheduler a few milliseconds of CPU, as much as a chunk's whole host side when a
GPU does the arithmetic. Inside the task each chunk goes through the three stages of
:func:`unet.engine.worker.run_chunk`: :func:`~unet.engine.worker.prepare_chunk` (read, decode,
mirror) in a pool of readers that keeps ``READ_AHEAD`` chunks ahead of the device,
:func:`~unet.engine.worker.infer_chunk` in the task's own thread, one chunk after the other, and
:func:`~unet.engine.worker.finish_chunk` (write, then mark in the ledger) in a pool of writers.
Raw integer pixels go to the device as they are and are normalized there
(:func:`unet.predict.step.normalized`).

The guarantees of a chunk are those of ``run_chunk``: a chunk is marked only after its own write
returned, and the task returns (or raises) only once every write it started has ended, so that
no write of a failed run lands after the driver gave the output up.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from unet.engine.report import ChunkFailure
from unet.engine.worker import (
    ChunkResult,
    finish_chunk,
    infer_chunk,
    prepare_chunk,
    worker_checkpoint,
)
from unet.errors import InputReadError

if TYPE_CHECKING:
    from unet.engine.worker import ChunkJob, PreparedChunk

#: Chunks read ahead of the one on the device.
READ_AHEAD = 2
#: Chunks written at once.
WRITERS = 2
#: Output chunks whose decoded input a streaming worker keeps, and the memory it may take: the
#: windows read ahead by two streams side by side span up to 8 rows of input chunks in strips
#: of 4 (see unet.tiling.strip_order), where one chunk at a time needs 3. With the CPU path's
#: 18, two streams decoded far more input chunks per output chunk (benchmarks/README.md).
CACHE_CHUNKS = 64
CACHE_BYTES = 256 * 2**20


def run_chunk_batch(
    job: ChunkJob, indices: list[tuple[int, int]]
) -> list[ChunkResult | ChunkFailure]:
    """Segment the output chunks ``indices`` of ``job`` as a stream; one result per chunk, in
    the order of ``indices``.

    A chunk whose input cannot be read gives a :class:`~unet.engine.report.ChunkFailure` (not
    marked; the driver retries it on its own) and the others go on.

    Raises
    ------
    OutputWriteError: a chunk cannot be written; raised once every write started has ended
    DeviceOutOfMemory, or whatever the device raises: likewise
    """
    checkpoint = worker_checkpoint(job)
    job.source.grow_cache(CACHE_CHUNKS, CACHE_BYTES)
    results: list[ChunkResult | ChunkFailure | Future[ChunkResult]] = []
    with (
        ThreadPoolExecutor(READ_AHEAD, thread_name_prefix="unet-read") as readers,
        ThreadPoolExecutor(WRITERS, thread_name_prefix="unet-write") as writers,
    ):
        queue = iter(indices)
        reads: deque[tuple[tuple[int, int], float, Future[PreparedChunk]]] = deque()

        def read_next() -> None:
            index = next(queue, None)
            if index is not None:
                read = readers.submit(prepare_chunk, job, checkpoint, index)
                reads.append((index, time.perf_counter(), read))

        for _ in range(READ_AHEAD + 1):
            read_next()
        try:
            while reads:
                index, started, read = reads.popleft()
                try:
                    prepared = read.result()
                except InputReadError as error:
                    results.append(ChunkFailure(index, str(error)))
                    read_next()
                    continue
                read_next()
                mask, logits = infer_chunk(job, checkpoint, prepared)
                results.append(writers.submit(finish_chunk, job, prepared, mask, logits, started))
        except BaseException:
            # Reads not started are dropped; writes started end before the error leaves.
            for _, _, read in reads:
                read.cancel()
            raise
    return [item.result() if isinstance(item, Future) else item for item in results]
