"""One Dask task of a run: a batch of chunks on one worker, and the small result it sends back.

A worker with a device (a GPU, or a stand-in for one that replaced
:func:`unet.predict.device_step`) runs its batch as a stream
(:func:`unet.engine.stream.run_chunk_batch`): reading ahead, the device step, writing in a
pool. A CPU worker runs the chunks one after the other (:func:`unet.engine.worker.run_chunk`),
each forward pass with every core: a second chunk's reading and writing beside it only took
cores from torch. Either way each chunk is written, then marked in the ledger, as it would be in
a task of its own, and the driver gets one :class:`TaskResult` of summed statistics per task.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from unet.engine.report import ChunkFailure
from unet.errors import InputReadError

if TYPE_CHECKING:
    from unet.engine.worker import ChunkJob, ChunkResult


@dataclass(frozen=True)
class TaskResult:
    """What a task tells the driver: which chunks are finished and their summed statistics.

    Attributes
    ----------
    done: int32 (n, 2), the chunks written (or skipped) and marked in the ledger
    computed, skipped: how many of them the model computed, and how many needed no model
    class_pixels: int64 per label, no-data left out
    nodata_pixels: pixels of label ``MASK_NODATA``
    failures: chunks whose input could not be read (not marked)
    seconds: the task's wall time on its worker
    worker: the address of the worker that ran it (None outside a worker)
    """

    done: np.ndarray
    computed: int
    skipped: int
    class_pixels: tuple[int, ...]
    nodata_pixels: int
    failures: tuple[ChunkFailure, ...]
    seconds: float
    worker: str | None = None

    @classmethod
    def failed(cls, chunks: np.ndarray, reason: str) -> TaskResult:
        """The result of a task of one chunk whose input could not be read."""
        index = (int(chunks[0][0]), int(chunks[0][1]))
        return cls(np.empty((0, 2), np.int32), 0, 0, (), 0, (ChunkFailure(index, reason),), 0.0)

    def without_failures(self) -> TaskResult:
        return replace(self, failures=())


def worker_device(device: str) -> tuple[str, bool]:
    """``(device, streams)`` of this worker process for a run's ``device`` (``auto``, ``cpu``,
    ``cuda``, ``cuda:N``): the device it resolves to here, and whether chunks go to a device as
    a stream: on a GPU, or where a stand-in replaced :func:`unet.predict.device_step` (a
    simulated device, :mod:`unet.bench.simulate`)."""
    import unet.predict
    import unet.predict.step
    from unet.predict.device import resolve_device

    resolved = str(resolve_device(device))
    replaced = unet.predict.device_step is not unet.predict.step.device_step
    return resolved, resolved.startswith("cuda") or replaced


def run_chunk_task(job: ChunkJob, chunks: np.ndarray) -> TaskResult:
    """Segment the chunks ``chunks`` (int32 (n, 2)) of ``job`` on this worker.

    A chunk whose input cannot be read is a failure in the result and the others go on; a task
    of one such chunk raises instead, so that Dask retries it.

    Raises
    ------
    InputReadError: the input of a task's only chunk cannot be read
    OutputWriteError: a chunk cannot be written; raised once every write started has ended
    DeviceOutOfMemory, or whatever the device raises: likewise
    """
    from unet.engine.stream import run_chunk_batch
    from unet.engine.worker import run_chunk

    started = time.perf_counter()
    indices = [(int(i), int(j)) for i, j in chunks]
    streams = job.stream if job.stream is not None else worker_device(job.device)[1]
    if streams and job.torch_threads is None:
        # A device does the arithmetic; each stream thread asking for every core gets a team
        # of its own (see unet.engine.cluster.gpu_plan).
        job = replace(job, torch_threads=1)
    results: list[ChunkResult | ChunkFailure]
    if streams and len(indices) > 1:
        results = run_chunk_batch(job, indices)
    else:
        results = []
        for index in indices:
            try:
                results.append(run_chunk(job, index))
            except InputReadError as error:
                if len(indices) == 1:
                    raise
                results.append(ChunkFailure(index, str(error)))
    return summarize(results, time.perf_counter() - started)


def summarize(results: list[ChunkResult | ChunkFailure], seconds: float) -> TaskResult:
    """One :class:`TaskResult` of a task's chunk results."""
    finished = [r for r in results if not isinstance(r, ChunkFailure)]
    failures = tuple(r for r in results if isinstance(r, ChunkFailure))
    labels = max((len(r.class_counts) for r in finished), default=0)
    pixels = np.zeros(labels, np.int64)
    for result in finished:
        pixels[: len(result.class_counts)] += result.class_counts
    done = np.asarray([r.index for r in finished], np.int32).reshape(-1, 2)
    skipped = sum(1 for r in finished if r.skipped)
    return TaskResult(
        done=done,
        computed=len(finished) - skipped,
        skipped=skipped,
        class_pixels=tuple(pixels.tolist()),
        nodata_pixels=sum(r.nodata_pixels for r in finished),
        failures=failures,
        seconds=seconds,
        worker=_worker_address(),
    )


def _worker_address() -> str | None:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return None
