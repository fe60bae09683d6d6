"""The driver of a run: plan, take the output's lock, submit one task per pending chunk, gather
small statistics.

The driver plans (chunk grid, fingerprint, which chunks are finished or background), submits one
task per pending output chunk and gathers small statistics; workers read, infer and write
(:mod:`unet.engine.worker`). The driver never holds the image or the mask, so its memory does not
grow with the image. The data flow is drawn in the README's "Architecture" section.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from unet.config import SegmentParameters
from unet.engine.ledger import ATTRIBUTE, finished_chunks, mark_finished
from unet.engine.output import finish_output, open_output
from unet.engine.plan import RunPlan, plan_run
from unet.engine.progress import announce, run_settings
from unet.engine.report import ChunkFailure, ProgressCallback, SegmentReport
from unet.errors import (
    ChunksFailed,
    InputReadError,
    writing,
)
from unet.tiling import ChunkGrid, strip_order

if TYPE_CHECKING:
    from unet.engine.cluster import ClusterPlan
    from unet.engine.worker import ChunkJob
    from unet.io.source import ImageSource
    from unet.tiling import Geometry

log = logging.getLogger(__name__)

#: Tasks in flight per worker: enough to keep workers busy, few enough to keep the driver flat.
IN_FLIGHT_PER_WORKER = 4


#: A chunk task that fails (a worker died, a read timed out) is retried this many times.
TASK_RETRIES = 3


#: After a failure, seconds to wait at most for the chunks in flight to end.
DRAIN_SECONDS = 300


def segment(
    input: str,
    output: str,
    parameters: SegmentParameters,
    *,
    client: Any = None,
    progress: ProgressCallback | None = None,
    plan: RunPlan | None = None,
    cluster: ClusterPlan | None = None,
) -> SegmentReport:
    """Segment the image at ``input`` into an OME-Zarr label image at ``output``.

    Parameters
    ----------
    input: Zarr array or OME-Zarr image (path or fsspec URL)
    output: path or URL of the OME-Zarr 0.5 group to write; resumed when it holds an unfinished
        run with the same fingerprint
    parameters: the run's settings
    client: a ``distributed.Client`` to use; when None one is made from ``parameters``
    progress: called with (chunks done, chunks total) as chunks finish
    plan: the run's plan when the caller made it already (:func:`unet.engine.plan.plan_run` of
        the same input, output and parameters): the run is then not planned again
    cluster: the plan ``client``'s workers were started from, when the caller started them
        (e.g. :func:`unet.engine.cluster.gpu_plan` of simulated GPUs); default
        :func:`unet.engine.cluster.plan_cluster` of ``parameters``

    With ``parameters.instances`` the instance pass (:mod:`unet.engine.instances`) follows the
    chunks, before the output is marked complete.

    Returns
    -------
    SegmentReport

    Raises
    ------
    OutputLocked: another run is writing ``output``
    ChunksFailed: some chunks' input could not be read; the others are written, the output is
        left incomplete and the error's ``report`` lists ``chunks_failed``
    OutputWriteError: the output cannot be written (read-only, disk full)
    """
    from unet.engine.lock import output_lock
    from unet.io.codecs import use_fast_codecs

    started = time.perf_counter()
    use_fast_codecs()
    if plan is None:
        plan = plan_run(input, output, parameters)
    with output_lock(output):
        return _segment(plan, client, progress, started, cluster)


def _segment(
    plan: RunPlan,
    client: Any,
    progress: ProgressCallback | None,
    started: float,
    cluster_plan: ClusterPlan | None,
) -> SegmentReport:
    """The body of :func:`segment`, run while this process holds the output's lock."""
    source, checkpoint, parameters, output = (
        plan.source,
        plan.checkpoint,
        plan.parameters,
        plan.output,
    )
    with writing(output):
        group = open_output(plan)

    report = SegmentReport(
        input=plan.input,
        output=output,
        shape=source.shape,
        chunks_total=plan.grid.total,
        class_names=list(checkpoint.class_names),
        class_pixels=[0] * len(checkpoint.class_names),
    )
    finished = finished_chunks(group)
    report.chunks_resumed = int(finished.sum())
    pending = [(int(i), int(j)) for i, j in zip(*np.nonzero(~finished), strict=True)]
    # In strips, so that consecutive chunks share the input chunks the workers keep decoded.
    pending = strip_order(pending)
    if parameters.skip_background and pending:
        pending = _skip_background(source, group, pending, plan.grid, report)

    from unet.engine.cluster import plan_cluster

    if cluster_plan is None:
        cluster_plan = plan_cluster(parameters.device, parameters.workers, parameters.scheduler)
    job = chunk_job(plan, group, cluster_plan.torch_threads)
    reasons: list[str] = []
    if pending:
        pending = _check_input_chunks(job, checkpoint.model.geometry, pending, report, reasons)
    done = report.chunks_resumed + report.chunks_skipped
    if progress:
        announce(progress, lambda: run_settings(plan, cluster_plan, pending, report))
        progress(done, report.chunks_total)
    upper = _upper_levels(plan, group, pending, cluster_plan.chunks_per_task)
    try:
        if pending:
            with _client_or(client, cluster_plan, parameters.scheduler) as active:
                for result in run_chunks(active, job, pending, cluster_plan.chunks_per_task):
                    if isinstance(result, ChunkFailure):
                        report.chunks_failed.append(list(result.index))
                        reasons.append(result.reason)
                        continue
                    if upper is not None:
                        upper.chunk_done(result.index)
                    done += 1
                    if result.skipped:
                        report.chunks_skipped += 1
                    else:
                        report.chunks_computed += 1
                    report.class_pixels = [
                        a + b
                        for a, b in zip(report.class_pixels, result.class_counts, strict=False)
                    ]
                    if progress:
                        progress(done, report.chunks_total)
        if report.chunks_failed:
            report.chunks_failed.sort()
            report.seconds = time.perf_counter() - started
            raise _chunks_failed(report, reasons[0])
        if parameters.instances:
            report.objects_per_class = _instances(plan, client, cluster_plan)
        with writing(output):
            finish_output(plan, upper)
    finally:
        if upper is not None:
            upper.close()  # no block is written after the run gave the output up
    if plan.georeference is not None:
        from unet.io.geo import write_georeference

        write_georeference(output, plan.georeference.for_labels(parameters.nodata is not None))
    report.seconds = time.perf_counter() - started
    return report


def chunk_job(plan: RunPlan, group: Any, torch_threads: int | None = None) -> ChunkJob:
    """The :class:`~unet.engine.worker.ChunkJob` of ``plan``'s chunks, written into ``group``
    (the output, :func:`unet.engine.output.open_output` of ``plan``)."""
    from unet.engine.worker import ChunkJob

    parameters = plan.parameters
    return ChunkJob(
        source=plan.source,
        output=plan.output,
        checkpoint=plan.checkpoint.path,
        checkpoint_digest=plan.checkpoint.digest,
        chunks=plan.chunks,
        tile_size=plan.tile_size,
        batch_size=parameters.batch_size,
        device=parameters.device,
        precision=parameters.precision,
        probabilities=parameters.probabilities,
        nodata=parameters.nodata,
        torch_threads=torch_threads,
        pyramid_levels=group.attrs[ATTRIBUTE].get("chunk_levels", 0),
    )


def run_chunks(
    client: Any,
    job: Any,
    pending: list[Any],
    chunks_per_task: int = 1,
    task: Callable[[Any, Any], Any] | None = None,
) -> Iterator[Any]:
    """Results of ``run_chunk`` for every pending chunk, as they complete (retried on failure);
    or of ``task(job, item)`` for every item of ``pending`` when ``task`` is given (one a task).

    With ``chunks_per_task`` above 1, each task is a stream of that many consecutive chunks
    (:func:`unet.engine.stream.run_chunk_batch`), and their results come as each task ends.

    A chunk whose input cannot be read yields a :class:`ChunkFailure` and the others go on (a
    chunk of a stream that failed so is first run again alone, with the retries of a task); any
    other failure (the output cannot be written, the device fails) ends the run, once the chunks
    in flight have ended: a task still running after the run released the output's lock could
    write into the output of the next run.
    """
    from distributed import as_completed, wait

    from unet.engine.stream import run_chunk_batch
    from unet.engine.worker import run_chunk

    if not pending:
        return
    addresses = list(client.scheduler_info().get("workers", {}))
    # A key of its own (hash=False): a job equal to an earlier one (the instance pass's second
    # round, a rerun on the same client) would share that one's content-hashed key, and the
    # earlier future's release could then drop the data from under this run's tasks.
    job_future = client.scatter(job, broadcast=True, hash=False)
    if task is not None:
        chunks_per_task = 1
    queue = TaskQueue(pending, chunks_per_task, addresses, IN_FLIGHT_PER_WORKER)

    in_flight: dict[str, tuple[Any, list[tuple[int, int]], str | None]] = {}

    def submit(group: list[tuple[int, int]], worker: str | None = None) -> Any:
        where = {"workers": [worker], "allow_other_workers": True} if worker else {}
        if len(group) == 1:
            future = client.submit(
                task or run_chunk, job_future, group[0], retries=TASK_RETRIES, pure=False, **where
            )
        else:
            future = client.submit(
                run_chunk_batch, job_future, group, retries=TASK_RETRIES, pure=False, **where
            )
        in_flight[future.key] = (future, group, worker)
        return future

    futures = as_completed([submit(*task) for task in queue.first()])
    try:
        for future in futures:
            _, group, worker = in_flight.pop(future.key)
            try:
                results = future.result()
            except InputReadError as error:
                results = ChunkFailure(group[0], str(error))
            for result in results if isinstance(results, list) else [results]:
                if isinstance(result, ChunkFailure) and len(group) > 1:
                    futures.add(submit([result.index]))  # alone, with a task's retries
                else:
                    yield result
            following = queue.take(worker)
            if following is not None:
                futures.add(submit(*following))
    except BaseException as error:
        if not isinstance(error, KeyboardInterrupt):
            with contextlib.suppress(TimeoutError):
                wait([future for future, _, _ in in_flight.values()], timeout=DRAIN_SECONDS)
        raise


def _upper_levels(
    plan: RunPlan, group: Any, pending: list[tuple[int, int]], chunks_per_task: int
) -> Any:
    """The pyramid levels above the chunks' own, built while a streamed run goes on
    (:class:`unet.engine.levels.UpperLevels`); None for other runs, which build them at the end
    (on a CPU the chunks take minutes and the end's fraction of a second does not matter, while
    a thread beside the forward passes slows them)."""
    if chunks_per_task <= 1 or not pending:
        return None
    from unet.engine.levels import UpperLevels

    done = np.ones(plan.grid.counts, dtype=bool)
    done[tuple(np.array(pending).T)] = False
    with writing(plan.output):
        state = group.attrs[ATTRIBUTE]
        return UpperLevels(
            plan.output, state.get("chunk_levels", 0), plan.grid, done, levels=state.get("levels")
        )


class TaskQueue:
    """The tasks of the pending chunks (in :func:`unet.tiling.strip_order`), handed out as
    workers free up.

    One chunk a task: in order. Streams of several chunks: with several workers the pending
    chunks are cut into one stretch per worker, and a worker that ends a task is given the next
    chunks of its own stretch (of the stretch with the most left once its own is done, from
    that one's end). A worker keeps the input chunks it decoded for the neighbouring windows
    (:mod:`unet.io.chunkcache`): two workers taking alternate tasks of one strip decoded twice
    as many. Tasks shrink towards the end (to a share of what is left per task in flight), so
    that no worker's device is left with a backlog of whole tasks while another one idles:
    with tasks of 8 chunks to the end, two simulated devices were left idle for a good part of
    the run.
    """

    def __init__(
        self,
        pending: list[tuple[int, int]],
        chunks_per_task: int,
        workers: list[str],
        per_worker: int = 1,
    ) -> None:
        self.size = max(1, chunks_per_task)
        self.per_worker = per_worker
        self.slots = per_worker * max(1, len(workers))  # tasks in flight in all
        keys: list[str | None] = list(workers) if self.size > 1 and len(workers) > 1 else [None]
        count = len(keys)
        self.stretches = {
            key: deque(pending[k * len(pending) // count : (k + 1) * len(pending) // count])
            for k, key in enumerate(keys)
        }

    def first(self) -> list[tuple[list[tuple[int, int]], str | None]]:
        """The tasks to start with: ``per_worker`` for each worker, in turns."""
        tasks = []
        rounds = self.per_worker * (self.slots // self.per_worker if None in self.stretches else 1)
        for _ in range(rounds):
            for worker in list(self.stretches):
                task = self.take(worker, steal=False)
                if task is not None:
                    tasks.append(task)
        return tasks

    def take(
        self, worker: str | None, steal: bool = True
    ) -> tuple[list[tuple[int, int]], str | None] | None:
        """The next task for ``worker`` (``(chunks, worker to ask)``); None when none is left."""
        left = sum(len(stretch) for stretch in self.stretches.values())
        size = min(self.size, max(1, -(-left // (2 * self.slots))))
        own = self.stretches.get(worker)
        if own:
            return [own.popleft() for _ in range(min(size, len(own)))], worker
        longest = max(self.stretches.values(), key=len)
        if not steal or not longest:
            return None
        return [longest.pop() for _ in range(min(size, len(longest)))][::-1], worker


def _chunks_failed(report: SegmentReport, first_reason: str) -> ChunksFailed:
    failed = report.chunks_failed
    listed = ", ".join(f"({i}, {j})" for i, j in failed[:8]) + (", ..." if len(failed) > 8 else "")
    error = ChunksFailed(
        f"{len(failed)} of {report.chunks_total} chunks of {report.output} could not be computed "
        f"and are not marked done (chunks {listed}; first error: {first_reason}): the output is "
        "incomplete; repair the input and rerun the same command to compute only these chunks"
    )
    error.report = report
    return error


def _instances(plan: RunPlan, client: Any, cluster_plan: Any) -> dict[str, int]:
    """The instance pass (:mod:`unet.engine.instances`) after the mask's chunks, on ``client``
    or a cluster of ``cluster_plan``, unless an earlier run of this output finished it; the
    objects per class."""
    from unet.engine.instances.stage import finished_objects, instance_pass

    finished = finished_objects(plan.output)
    if finished is not None:
        return finished
    with _client_or(client, cluster_plan, plan.parameters.scheduler) as active:
        return instance_pass(plan, active)


def _client_or(client: Any, plan: Any, scheduler: str | None):
    import contextlib

    from unet.engine.cluster import dask_client

    if client is not None:
        return contextlib.nullcontext(client)
    return dask_client(plan, scheduler)


def _check_input_chunks(
    job: ChunkJob,
    geometry: Geometry,
    pending: list[tuple[int, int]],
    report: SegmentReport,
    reasons: list[str],
) -> list[tuple[int, int]]:
    """The pending chunks whose input is all stored; the others fail, or are counted.

    In an image that stores every chunk (``unet ingest``'s) a missing input chunk is lost data:
    each output chunk whose window needs one fails as a corrupt one would. Elsewhere a missing
    chunk may be one Zarr left out as equal to the fill value: the run goes on, and the report's
    ``input_chunks_missing`` and a warning say how many were read as the fill value.
    """
    from unet.io.presence import every_chunk_stored, missing_chunks, stored_chunk_shape

    source = job.source
    missing = missing_chunks(source)
    if not missing:
        return pending
    if not every_chunk_stored(source):
        report.input_chunks_missing = len(missing)
        log.warning(
            "%d stored chunk(s) of %s are missing and were read as its fill value (Zarr leaves "
            "out chunks equal to it): if chunks were lost, restore them and rerun with "
            "--overwrite",
            len(missing),
            source.url,
        )
        return pending
    rows, cols = stored_chunk_shape(source)
    runnable = []
    for index in pending:
        window = job.window(index, geometry)
        needed = {
            (i, j)
            for i in range(window.read_rows.start // rows, -(-window.read_rows.stop // rows))
            for j in range(window.read_cols.start // cols, -(-window.read_cols.stop // cols))
        }
        lost = sorted(needed & missing)
        if not lost:
            runnable.append(index)
            continue
        report.chunks_failed.append(list(index))
        reasons.append(
            f"input chunk {lost[0]} of {source.url} is missing from a store that holds every chunk"
        )
    return runnable


def _skip_background(
    source: ImageSource,
    group: Any,
    pending: list[tuple[int, int]],
    grid: ChunkGrid,
    report: SegmentReport,
) -> list[tuple[int, int]]:
    """Mark chunks without tissue finished (label 0 is the fill value); return the rest."""
    from unet.engine.background import chunks_with_tissue, tissue_mask
    from unet.engine.ledger import open_ledger

    low, factor = source.low_resolution()
    # One low-resolution pixel of margin: tissue seen only between the strided samples still counts.
    tissue = chunks_with_tissue(tissue_mask(low, dilation=1), factor, grid)
    ledger = open_ledger(group)
    remaining = []
    for index in pending:
        if tissue[index]:
            remaining.append(index)
        else:
            mark_finished(ledger, index)
            report.chunks_skipped += 1
            rows, cols = grid.bounds(index)
            report.class_pixels[0] += (rows.stop - rows.start) * (cols.stop - cols.start)
    return remaining
