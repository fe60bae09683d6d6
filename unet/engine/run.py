"""The driver of a run: plan, take the output's lock, settle what needs no model, hand the rest
to Dask in tasks of many chunks, gather small statistics.

The driver plans (chunk grid, fingerprint, which chunks are finished, no data or background:
:mod:`unet.engine.settled`), then hands the pending chunks out in tasks sized by measurement
(:mod:`unet.engine.dispatch`); workers read, infer and write (:mod:`unet.engine.task`,
:mod:`unet.engine.worker`), and also halve the upper pyramid levels (:mod:`unet.engine.levels`).
The driver holds coordinates and counts, never the image or the mask, so its memory does not
grow with the image. The data flow is drawn in the README's "Architecture" section.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from unet.config import SegmentParameters
from unet.engine.dispatch import describe_workers, run_chunk_tasks
from unet.engine.ledger import ATTRIBUTE, finished_chunks
from unet.engine.output import finish_output, open_output
from unet.engine.plan import RunPlan, plan_run
from unet.engine.progress import announce, run_settings
from unet.engine.report import ProgressCallback, SegmentReport
from unet.errors import ChunksFailed, writing
from unet.tiling import strip_order_array

if TYPE_CHECKING:
    from unet.engine.cluster import ClusterPlan
    from unet.engine.levels import UpperLevels
    from unet.engine.worker import ChunkJob
    from unet.tiling import Geometry

log = logging.getLogger(__name__)


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
    from unet.engine.cluster import plan_cluster
    from unet.engine.settled import settle_chunks

    checkpoint, parameters, output = plan.checkpoint, plan.parameters, plan.output
    with writing(output):
        group = open_output(plan)

    report = SegmentReport(
        input=plan.input,
        output=output,
        shape=plan.source.shape,
        chunks_total=plan.grid.total,
        class_names=list(checkpoint.class_names),
        class_pixels=[0] * len(checkpoint.class_names),
    )
    finished = finished_chunks(group)
    report.chunks_resumed = int(finished.sum())
    todo = ~finished
    if cluster_plan is None:
        cluster_plan = plan_cluster(parameters.device, parameters.workers, parameters.scheduler)
    job = chunk_job(plan, group, cluster_plan.torch_threads, cluster_plan)
    reasons: list[str] = []
    if todo.any():
        from unet.io.presence import stored_grids

        # One listing of the input's keys serves both: which input chunks are lost or left
        # out, and which output chunks lie wholly in absent ones.
        stored = stored_grids(plan.source)
        # First: a chunk whose input is lost fails, whatever the plan would settle it as.
        todo = _check_input_chunks(job, checkpoint.model.geometry, todo, report, reasons, stored)
    if todo.any():
        with writing(output):
            settled, background = settle_chunks(plan, group, todo, report, stored[0])
        todo &= ~settled
        if background.any():
            job = chunk_job(plan, group, cluster_plan.torch_threads, cluster_plan, background)
    done = report.chunks_resumed + report.chunks_skipped
    order = strip_order_array(todo)
    if len(order) == 0 and not parameters.instances:
        if progress:
            announce(progress, lambda: run_settings(plan, cluster_plan, todo, report))
            progress(done, report.chunks_total)
        if report.chunks_failed:
            raise _chunks_failed(report, reasons[0], started)
        with writing(output):
            finish_output(plan)
        return _finished(plan, report, started)
    with _client_or(client, cluster_plan, parameters.scheduler) as active:
        upper = _upper_levels(plan, group, ~todo) if len(order) else None
        levels = LevelTasks(active, upper)
        try:
            workers = describe_workers(active, parameters.device, job.stream)
            if progress:
                found = workers if parameters.scheduler is not None else None
                announce(progress, lambda: run_settings(plan, cluster_plan, todo, report, found))
                progress(done, report.chunks_total)
            for result in run_chunk_tasks(active, job, order, workers):
                for failure in result.failures:
                    report.chunks_failed.append(list(failure.index))
                    reasons.append(failure.reason)
                report.chunks_computed += result.computed
                report.chunks_skipped += result.skipped
                for label, count in enumerate(result.class_pixels[: len(report.class_pixels)]):
                    report.class_pixels[label] += count
                report.nodata_pixels += result.nodata_pixels
                done += len(result.done)
                levels.chunks_done(result.done)
                if progress:
                    progress(done, report.chunks_total)
            if report.chunks_failed:
                raise _chunks_failed(report, reasons[0], started)
            levels.wait()
            if parameters.instances:
                report.objects_per_class = _instances(
                    plan, active, getattr(progress, "instances", None)
                )
            with writing(output):
                finish_output(plan, upper, active)
        finally:
            levels.close()  # no block is written after the run gave the output up
    return _finished(plan, report, started)


def _finished(plan: RunPlan, report: SegmentReport, started: float) -> SegmentReport:
    """The report of a run whose output is complete, its georeference written."""
    if plan.georeference is not None:
        from unet.io.geo import write_georeference

        write_georeference(
            plan.output, plan.georeference.for_labels(plan.parameters.nodata is not None)
        )
    report.seconds = time.perf_counter() - started
    return report


def chunk_job(
    plan: RunPlan,
    group: Any,
    torch_threads: int | None = None,
    cluster: ClusterPlan | None = None,
    background: np.ndarray | None = None,
) -> ChunkJob:
    """The :class:`~unet.engine.worker.ChunkJob` of ``plan``'s chunks, written into ``group``
    (the output, :func:`unet.engine.output.open_output` of ``plan``).

    ``cluster``: workers planned to stream (``streams``, the local GPU workers)
    stream every task; others decide by their device. ``background``: bool grid of the
    background chunks the tasks write as zeros (see :mod:`unet.engine.settled`).
    """
    from unet.engine.worker import ChunkJob

    parameters = plan.parameters
    stream = True if cluster is not None and cluster.streams else None
    bits = b""
    if background is not None and background.any():
        bits = np.packbits(background.ravel()).tobytes()
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
        stream=stream,
        background=bits,
    )


def _upper_levels(plan: RunPlan, group: Any, done: np.ndarray) -> UpperLevels | None:
    """The pyramid levels above the chunks' own, halved on the workers while the run goes on
    (:class:`unet.engine.levels.UpperLevels`); None when the chunks write every level."""
    from unet.engine.levels import UpperLevels

    with writing(plan.output):
        state = group.attrs[ATTRIBUTE]
        upper = UpperLevels(
            plan.output, state.get("chunk_levels", 0), plan.grid, done, levels=state.get("levels")
        )
    return upper if upper.count else None


class LevelTasks:
    """The blocks of :class:`~unet.engine.levels.UpperLevels` that are ready, halved by tasks
    on ``client``'s workers, :data:`BLOCKS_PER_TASK` at a time."""

    def __init__(self, client: Any, upper: UpperLevels | None) -> None:
        self.client, self.upper = client, upper
        self.in_flight: list[Any] = []

    def chunks_done(self, indices: np.ndarray) -> None:
        """Level-0 chunks ``indices`` are written: hand out the blocks they complete."""
        if self.upper is None:
            return
        self.upper.chunks_done(indices)
        self._update()

    def wait(self) -> None:
        """Let the tasks in flight end; the blocks left are halved by
        :meth:`~unet.engine.levels.UpperLevels.finish`, in one task, level after level (handing
        them out a round of tasks per level cost the run's tail a round trip each)."""
        from distributed import wait

        if self.upper is None or not self.in_flight:
            return
        wait(self.in_flight)
        for future in self.in_flight:
            self.upper.blocks_done(future.result())  # a failure is raised here
        self.in_flight = []

    def close(self) -> None:
        """Wait for the tasks in flight, whatever they end with."""
        from unet.engine.dispatch import drain

        drain(self.in_flight)

    def _update(self) -> None:
        """Collect the tasks that ended; while fewer than :data:`LEVEL_TASKS` are in flight,
        hand out the blocks ready by now in one task: as soon as they are ready while the chunks
        run, and gathered into larger tasks while the workers are busy."""
        from unet.engine.levels import halve_blocks

        running = []
        for future in self.in_flight:
            if future.done():
                self.upper.blocks_done(future.result())  # a failure is raised here
            else:
                running.append(future)
        self.in_flight = running
        if len(self.in_flight) >= LEVEL_TASKS:
            return
        ready = self.upper.take_ready()
        if ready:
            self.in_flight.append(
                self.client.submit(halve_blocks, self.upper.spec, ready, pure=False)
            )


#: Tasks of upper-level blocks in flight at once: the blocks ready meanwhile wait and go in the
#: next one, so the driver submits few of them, and none waits for a batch to fill up (a batch
#: of 16 held a 16384^2 mask's blocks back until the very end of the run).
LEVEL_TASKS = 2


def _chunks_failed(report: SegmentReport, first_reason: str, started: float) -> ChunksFailed:
    report.chunks_failed.sort()
    report.seconds = time.perf_counter() - started
    failed = report.chunks_failed
    listed = ", ".join(f"({i}, {j})" for i, j in failed[:8]) + (", ..." if len(failed) > 8 else "")
    error = ChunksFailed(
        f"{len(failed)} of {report.chunks_total} chunks of {report.output} could not be computed "
        f"and are not marked done (chunks {listed}; first error: {first_reason}): the output is "
        "incomplete; repair the input and rerun the same command to compute only these chunks"
    )
    error.report = report
    return error


def _instances(
    plan: RunPlan, client: Any, progress: Callable[[int, int, int], Any] | None = None
) -> dict[str, int]:
    """The instance pass (:mod:`unet.engine.instances`) after the mask's chunks, on
    ``client``, unless an earlier run of this output finished it; the objects per class.
    ``progress(round, done, total)`` follows the pass's two rounds of chunks."""
    from unet.engine.instances.stage import finished_objects, instance_pass

    finished = finished_objects(plan.output)
    if finished is not None:
        return finished
    return instance_pass(plan, client, progress)


def _client_or(client: Any, plan: Any, scheduler: str | None):
    from unet.engine.cluster import dask_client

    if client is not None:
        return contextlib.nullcontext(client)
    return dask_client(plan, scheduler)


def _check_input_chunks(
    job: ChunkJob,
    geometry: Geometry,
    todo: np.ndarray,
    report: SegmentReport,
    reasons: list[str],
    stored: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """The chunks of ``todo`` (bool (chunks_y, chunks_x)) whose input is all stored; the others
    fail, or are counted. ``stored``: the input's stored objects, in some channel and in every
    channel (:func:`unet.io.presence.stored_grids`).

    In an image that stores every chunk (``unet ingest``'s) a missing input chunk is lost data:
    each output chunk whose window needs one fails as a corrupt one would. Elsewhere a missing
    chunk may be one Zarr left out as equal to the fill value: the run goes on, and the report's
    ``input_chunks_missing`` and a warning say how many were read as the fill value.
    """
    from unet.io.presence import every_chunk_stored, stored_chunk_shape

    source = job.source
    missing = ~stored[1]
    count = int(missing.sum())
    if not count:
        return todo
    if not every_chunk_stored(source):
        report.input_chunks_missing = count
        log.warning(
            "%d stored chunk(s) of %s are missing and were read as its fill value (Zarr leaves "
            "out chunks equal to it): if chunks were lost, restore them and rerun with "
            "--overwrite",
            count,
            source.url,
        )
        return todo
    rows, cols = stored_chunk_shape(source)
    runnable = todo.copy()
    for i, j in np.argwhere(todo).tolist():
        window = job.window((i, j), geometry)
        needed = missing[
            window.read_rows.start // rows : -(-window.read_rows.stop // rows),
            window.read_cols.start // cols : -(-window.read_cols.stop // cols),
        ]
        if not needed.any():
            continue
        runnable[i, j] = False
        lost = np.argwhere(needed)[0]
        first = (
            int(lost[0]) + window.read_rows.start // rows,
            int(lost[1]) + window.read_cols.start // cols,
        )
        report.chunks_failed.append([i, j])
        reasons.append(
            f"input chunk {first} of {source.url} is missing from a store that holds every chunk"
        )
    return runnable
