"""A run of ``unet segment`` without Prefect: one image or every image of a folder.

The recipe per image is: check that no output would replace an input or something unet did not
write (:func:`check_job`), ingest (a TIFF, SVS, PNG or JPEG file becomes OME-Zarr in
``<output folder>/_ingested/``, again whenever the file changed), skip it when its mask is
complete with the same fingerprint,
segment it on Dask, and write ``<name>.preview.png`` beside the mask. One Dask cluster serves
every image of a run, started at the first image that needs computing; several images of a folder
are in flight at once (:data:`IMAGES_IN_FLIGHT`); one failing image does not stop the others, and
the run fails at the end naming them.

The Prefect flows (``flows/segment.py``) run the same jobs, with each step recorded as a task.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unet.config import SegmentParameters, validated
from unet.engine.report import SegmentReport
from unet.errors import FingerprintMismatch, InvalidParameter, UNetError, UnsupportedInput
from unet.io.folder import INGEST_SUFFIXES, ingested_location, is_zarr_store, list_images

if TYPE_CHECKING:
    from unet.engine.plan import RunPlan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageJob:
    """One image of a run: what the user named, the Zarr image to segment, the mask to write."""

    source: str
    zarr_input: str
    output: str
    needs_ingest: bool


def segment(
    input: str,
    output: str | None = None,
    *,
    client: Any = None,
    progress: Callable[[str, int, int], None] | None = None,
    **parameters: Any,
) -> SegmentReport | list[SegmentReport]:
    """Segment an image, or every image of a folder, as ``unet segment`` does, without Prefect.

    Parameters
    ----------
    input: Zarr / OME-Zarr image (path or fsspec URL), a TIFF, SVS, PNG or JPEG file, or a local
        folder of such images
    output: the OME-Zarr mask to write, or for a folder the folder of masks
        (``output/<name>.zarr``); None with ``labels="NAME"``, which writes the mask into the
        OME-Zarr image as ``input/labels/NAME``
    client: a ``distributed.Client`` to run on; by default a cluster is made from ``parameters``
    progress: called with (output, chunks done, chunks total) as chunks finish
    parameters: the options of ``unet segment`` by field name
        (:class:`~unet.config.SegmentParameters`: ``model``, ``tile_size``, ``device``, ...)

    Returns
    -------
    The :class:`~unet.engine.report.SegmentReport` of the image, or one per image of a folder.

    Raises
    ------
    UNetError: the first image's error when it is the only one that failed; otherwise one
        naming every failed image (the other images are segmented)
    """
    from unet.engine.destination import mask_location

    settings = validated(SegmentParameters, parameters)
    output = mask_location(input, output, settings.labels)
    folder = is_folder(input)
    jobs = folder_jobs(input, output) if folder else [image_job(input, output)]
    outcomes = run_jobs(jobs, settings, client=client, progress=progress)
    reports = collect_reports(jobs, outcomes)
    return reports if folder else reports[0]


def is_folder(input: str) -> bool:
    """Whether ``input`` is a local folder of images (not a Zarr store, not a URL)."""
    path = Path(input)
    return "://" not in input and path.is_dir() and not is_zarr_store(path)


def image_job(input: str, output: str) -> ImageJob:
    """The job of a single image; a local TIFF/PNG/JPEG is ingested next to the output
    (:func:`unet.io.folder.ingested_location`)."""
    if "://" not in input and Path(input).suffix.lower() in INGEST_SUFFIXES:
        return ImageJob(input, ingested_location(output), output, needs_ingest=True)
    return ImageJob(input, input, output, needs_ingest=False)


def folder_jobs(input: str, output: str) -> list[ImageJob]:
    """The jobs of the images directly inside the local folder ``input``, sorted by name.

    Raises
    ------
    UnsupportedInput: ``input`` is a URL (folders are listed on the local filesystem)
    InvalidParameter: ``output`` is the input folder itself (masks would become inputs)
    """
    if "://" in input:
        raise UnsupportedInput(
            f"folder {input} is a URL: folders are listed on the local filesystem; "
            "segment each image of an object store by its own URL"
        )
    folder, output_dir = Path(input), Path(output)
    items = list_images(folder)
    if output_dir.resolve() == folder.resolve():
        raise InvalidParameter(
            f"output folder {output} is the input folder: the masks would be taken for images "
            "on the next run; choose another output folder"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    return [
        ImageJob(
            str(item.source),
            str(item.zarr_input(output_dir)),
            str(item.mask_output(output_dir)),
            item.needs_ingest,
        )
        for item in items
    ]


def needs_ingest(job: ImageJob, parameters: SegmentParameters) -> bool:
    """Whether ``job``'s image file must be (re)ingested: with ``overwrite``, or when no copy of
    the file as it is now exists (none yet, or one of another file or of the file before it
    changed: :func:`unet.io.ingest.is_current_copy`)."""
    from unet.io.ingest import is_current_copy

    return job.needs_ingest and (
        parameters.overwrite or not is_current_copy(job.zarr_input, job.source)
    )


def check_job(job: ImageJob, parameters: SegmentParameters) -> None:
    """Refuse, before anything is written, a job whose outputs would replace an input or
    something unet did not write (:mod:`unet.io.replace`): the ingested copy, the mask, with
    ``instances`` the instance image and object table, and the preview.

    Raises
    ------
    InvalidParameter: an output is an input, holds one or lies inside one
    OutputExists: something is at an output's place that unet did not write there
    FingerprintMismatch: the image file changed (or its copy is gone) since its existing mask
        was made from its copy, without ``overwrite``
    """
    from unet.engine.instances.location import instances_location, objects_location
    from unet.io.locations import location_exists
    from unet.io.replace import check_apart, check_replaceable
    from unet.results.preview import preview_path

    inputs = [job.source] if job.source == job.zarr_input else [job.source, job.zarr_input]
    image = job.zarr_input if parameters.labels else None
    inside = parameters.labels is not None
    if job.needs_ingest:
        check_apart(job.zarr_input, [job.source], what="ingested copy")
        check_replaceable(job.zarr_input, "image", what="ingested copy")
    check_apart(job.output, inputs, inside_allowed=inside)
    check_replaceable(job.output, "mask")
    preview = preview_path(job.output, image=image)
    check_apart(preview, inputs, what="preview")
    check_replaceable(preview, "png", what="preview")
    if parameters.instances:
        instances = instances_location(job.output, image)
        objects = objects_location(job.output, image)
        check_apart(instances, inputs, what="instance image", inside_allowed=inside)
        check_apart(objects, inputs, what="object table")
        check_replaceable(instances, "instances", what="instance image")
        check_replaceable(objects, "parquet", what="object table")
    if needs_ingest(job, parameters) and not parameters.overwrite and location_exists(job.output):
        # Its copy would be made anew, and the mask no longer fits it: say so before the copy
        # it was made from is replaced.
        raise FingerprintMismatch(
            f"{job.output} was segmented from a copy of {job.source} that is missing or out of "
            f"date (the file changed, or {job.zarr_input} is gone or of another file): rerun "
            "with --overwrite to ingest and segment it again"
        )


@dataclass(frozen=True)
class Steps:
    """How the steps of one image run: plain calls by default; the Prefect flows pass their
    tasks, so that each step is recorded.

    ``ingest(job)``; ``segment(job, parameters, client, progress, plan)`` returns the report
    (``plan``: the image's :class:`~unet.engine.plan.RunPlan` when the caller made it already,
    else None); ``finish(job, parameters)`` checks and previews a segmented image (a failure
    there is logged, the image stays segmented).
    """

    ingest: Callable[[ImageJob], Any]
    segment: Callable[[ImageJob, SegmentParameters, Any, Any, Any], SegmentReport]
    finish: Callable[[ImageJob, SegmentParameters], Any]


def _ingest(job: ImageJob) -> None:
    from unet.io.ingest import ingest

    ingest(job.source, job.zarr_input, overwrite=True, progress=False)


def _segment(
    job: ImageJob, parameters: SegmentParameters, client: Any, progress: Any, plan: Any
) -> SegmentReport:
    from unet.engine.progress import ProgressLog, combine
    from unet.engine.run import segment as segment_image

    # Settings, progress and result as INFO lines of this module's logger (the CLI prints its
    # own on the terminal).
    lines = ProgressLog(image_name(job.source), log.info)
    try:
        report = segment_image(
            job.zarr_input,
            job.output,
            parameters,
            client=client,
            progress=combine(progress, lines),
            plan=plan,
        )
    finally:
        lines.close()
    lines.finished(report)
    return report


def _finish(job: ImageJob, parameters: SegmentParameters) -> None:
    write_preview(job.zarr_input, job.output, parameters)


#: The steps of a run without Prefect.
PLAIN_STEPS = Steps(ingest=_ingest, segment=_segment, finish=_finish)

#: Images of a run in flight at once. Around the chunks the cluster computes, each image has
#: steps in the driver (ingest, planning, pyramid, preview; tracked, Prefect's task runs and
#: artifacts): while one image's chunks run, the next images go through theirs, so a folder of
#: small images does not leave the workers waiting between images.
IMAGES_IN_FLIGHT = 4


def run_jobs(
    jobs: list[ImageJob],
    parameters: SegmentParameters,
    *,
    client: Any = None,
    progress: Callable[[str, int, int], None] | None = None,
    steps: Steps = PLAIN_STEPS,
    logger: logging.Logger | logging.LoggerAdapter = log,
    plans: Sequence[RunPlan] = (),
    images_in_flight: int = IMAGES_IN_FLIGHT,
) -> list[SegmentReport | Exception]:
    """Per job, in order, its report or the error that stopped it; one failure stops no other.

    Up to ``images_in_flight`` images run at once, each in a thread of its own with a copy of
    the caller's context variables (so steps that are Prefect tasks belong to the caller's flow
    run), all on one cluster: ``client``, or one made from ``parameters`` when the first image
    needs it (a run whose images are all finished starts none). ``plans``: plans the caller
    made already, used for the job of the same input and output.
    """
    planned = {(plan.input, plan.output): plan for plan in plans}
    stopping = threading.Event()
    # One image's error is raised to the caller, who says it: logged, it would be said twice.
    failures = _FailureLog(logger, shown=SHOWN_FAILURES if len(jobs) > 1 else 0)
    with _Cluster(client, parameters) as cluster:
        run = functools.partial(
            _run_job,
            parameters=parameters,
            cluster=cluster,
            progress=progress,
            steps=steps,
            logger=logger,
            planned=planned,
            stopping=stopping,
            failures=failures,
        )
        if images_in_flight <= 1 or len(jobs) <= 1:
            outcomes = [run(job) for job in jobs]
        else:
            outcomes = _concurrently(run, jobs, images_in_flight, stopping)
    failures.finish()
    return outcomes


#: Failed images a run names in its log and its error; the others are counted, and listed in
#: ``OUTPUT/_failures.json`` (:func:`collect_reports`).
SHOWN_FAILURES = 3
#: Where a folder run lists every image that failed, beside the masks.
FAILURES_FILE = "_failures.json"


class _FailureLog:
    """Logs the first ``shown`` failures of a run as they happen, then counts the others: a
    folder of 2,000 bad files gives a few lines, not 2,000."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter, shown: int) -> None:
        self._logger, self._shown, self._count = logger, shown, 0
        self._lock = threading.Lock()

    def log(self, job: ImageJob, error: Exception) -> None:
        with self._lock:
            self._count += 1
            if self._count <= self._shown:
                self._logger.error("%s failed: %s", job.source, _short(error))

    def finish(self) -> None:
        if self._shown and self._count > self._shown:
            self._logger.error("%d more images failed", self._count - self._shown)


def _short(error: Exception, limit: int = 300) -> str:
    """The error on one line, at most ``limit`` characters."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _concurrently(
    run: Callable[[ImageJob], SegmentReport | Exception],
    jobs: list[ImageJob],
    threads: int,
    stopping: threading.Event,
) -> list[SegmentReport | Exception]:
    """``[run(job) for job in jobs]``, ``threads`` at a time, each in a copy of this context."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=min(threads, len(jobs)), thread_name_prefix="unet-image")
    try:
        futures = [pool.submit(contextvars.copy_context().run, run, job) for job in jobs]
        outcomes = [future.result() for future in futures]
    except BaseException:
        # Interrupted: images not started yet never start; those running end with the cluster,
        # which the caller closes next, releasing their outputs' locks, and say nothing of it.
        stopping.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return outcomes


def _run_job(
    job: ImageJob,
    *,
    parameters: SegmentParameters,
    cluster: _Cluster,
    progress: Callable[[str, int, int], None] | None,
    steps: Steps,
    logger: logging.Logger | logging.LoggerAdapter,
    planned: dict[tuple[str, str], RunPlan],
    stopping: threading.Event,
    failures: _FailureLog,
) -> SegmentReport | Exception:
    """One image's steps: its report, or the error that stopped it (logged, unless the run is
    stopping: then the cluster closing under it is the cause, not news)."""
    from unet.engine.finished import finished_report

    try:
        check_reachable(job.zarr_input, job.output, parameters)
        check_job(job, parameters)
        if needs_ingest(job, parameters):
            steps.ingest(job)
        finished = finished_report(job.zarr_input, job.output, parameters)
        if finished is not None:
            logger.info("%s is complete with these settings: skipped", job.output)
            return finished
        callback = None if progress is None else _OutputProgress(progress, job.output)
        plan = planned.get((job.zarr_input, job.output))
        try:
            report = steps.segment(job, parameters, cluster.client(), callback, plan)
        finally:
            if callback is not None:
                callback.close()
        if callback is not None:
            callback.finished(report)
    except Exception as error:  # one image's failure, whatever it is, stops no other
        error = _explained(job, error)
        if not stopping.is_set():
            failures.log(job, error)
        return error
    try:
        steps.finish(job, parameters)
    except Exception as error:
        logger.warning("no preview for %s: %s", job.output, error)
    return report


def check_reachable(input: str, output: str, parameters: SegmentParameters) -> None:
    """Raise a one-line error when the remote stores of ``input`` or ``output`` cannot be
    reached (:func:`unet.io.remote_errors.check_store`: credentials, bucket, endpoint,
    permission); it also names the Dask scheduler when that does not answer either, so that a
    run on a machine without its setup says at once everything that is missing. Local paths
    cost nothing."""
    problems = reachability_problems(input, output, parameters)
    if problems:
        raise combined(problems)


def reachability_problems(
    input: str, output: str, parameters: SegmentParameters, *, scheduler: bool = False
) -> list[UNetError]:
    """The errors of :func:`check_reachable`, one per kind; the scheduler is probed when a store
    failed, or always with ``scheduler`` (a run that computes nothing needs none)."""
    from unet.io.remote_errors import check_store

    problems: list[UNetError] = []
    for location, writing in ((input, False), (output, True)):
        try:
            check_store(location, writing=writing)
        except UNetError as error:
            problems.append(error)
    if parameters.scheduler is not None and (problems or scheduler):
        from unet.engine.cluster import check_scheduler

        try:
            check_scheduler(parameters.scheduler)
        except UNetError as error:
            problems.append(error)
    # Input and output in one store fail alike: their advice once.
    kinds: dict[type, UNetError] = {}
    for problem in problems:
        kinds.setdefault(type(problem), problem)
    return list(kinds.values())


def combined(problems: Sequence[UNetError]) -> UNetError:
    """One error saying every one of ``problems`` (of the first one's kind)."""
    if len(problems) == 1:
        return problems[0]
    return type(problems[0])("; also ".join(str(problem) for problem in problems))


def _explained(job: ImageJob, error: Exception) -> Exception:
    """``error``, or its one-line error when it is a failure to reach a remote store of
    ``job`` (:func:`unet.io.remote_errors.explain`)."""
    from unet.io.remote_errors import explain

    return explain(job.zarr_input, error) or explain(job.output, error, writing=True) or error


class _OutputProgress:
    """The progress callback of one image from a run's ``progress(output, done, total)``;
    ``started``, ``instances``, ``finished`` and ``close`` go to the run's callback's methods of
    the same name (with the output first) where it has them."""

    def __init__(self, progress: Callable[..., Any], output: str) -> None:
        self.progress, self.output = progress, output

    def __call__(self, done: int, total: int) -> None:
        self.progress(self.output, done, total)

    def started(self, settings: Any) -> None:
        self._call("started", settings)

    def instances(self, round: int, done: int, total: int) -> None:
        self._call("instances", round, done, total)

    def finished(self, report: SegmentReport) -> None:
        self._call("finished", report)

    def close(self) -> None:
        self._call("close")

    def _call(self, method: str, *args: Any) -> None:
        function = getattr(self.progress, method, None)
        if function is not None:
            function(self.output, *args)


class _Cluster:
    """The run's Dask client: the caller's, or one started when an image first needs it and
    closed when the run ends.

    A cluster this run starts lives in a thread of its own, which enters and leaves
    :func:`~unet.engine.cluster.dask_client` in one context: ``distributed.Client`` keeps
    itself in a context variable that must be reset where it was set, and the image thread that
    asks first is not where the run ends.
    """

    def __init__(self, client: Any, parameters: SegmentParameters):
        self._client = client
        self._parameters = parameters
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._keeper: threading.Thread | None = None

    def client(self) -> Any:
        """The client, started now when there is none yet; raises what stopped its start."""
        with self._lock:
            if self._client is None:
                started: list[Any] = []
                ready = threading.Event()
                keeper = threading.Thread(
                    target=self._keep, args=(started, ready), name="unet-cluster"
                )
                keeper.start()
                ready.wait()
                if isinstance(started[0], BaseException):
                    raise started[0]
                self._client, self._keeper = started[0], keeper
            return self._client

    def _keep(self, started: list[Any], ready: threading.Event) -> None:
        from unet.engine.cluster import dask_client, plan_cluster

        parameters = self._parameters
        try:
            plan = plan_cluster(parameters.device, parameters.workers, parameters.scheduler)
            with dask_client(plan, parameters.scheduler) as client:
                started.append(client)
                ready.set()
                self._closing.wait()
        except BaseException as error:
            if started:  # the run's results are in: a cluster that closes badly changes none
                log.warning("the run's Dask cluster did not close cleanly: %s", error)
            else:
                started.append(error)
        finally:
            ready.set()

    def __enter__(self) -> _Cluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._closing.set()
        if self._keeper is not None:
            self._keeper.join()


def write_preview(input: str, output: str, parameters: SegmentParameters) -> tuple[str, Any]:
    """Write ``<name>.preview.png`` beside the mask at ``output``; return its path and the
    :class:`~unet.results.preview.Preview`."""
    from unet.io.complete import check_finished
    from unet.results.preview import build_preview, preview_path, write_bytes

    check_finished(output, reader="preview it")
    path = preview_path(output, image=input if parameters.labels else None)
    preview = build_preview(input, output, channels_last=parameters.channels_last)
    write_bytes(path, preview.png)
    return path, preview


def image_name(location: str) -> str:
    """The name an image goes by in log lines and task names: the last part of its path or
    URL without ``.zarr`` or an image file's suffix (``scans/cells-a.png`` -> ``cells-a``)."""
    name = str(location).rstrip("/").rsplit("/", 1)[-1]
    name = name.removesuffix(".zarr")
    stem, suffix = os.path.splitext(name)
    return stem if suffix.lower() in INGEST_SUFFIXES else name


def collect_reports(
    jobs: list[ImageJob], outcomes: list[SegmentReport | Exception]
) -> list[SegmentReport]:
    """The reports, or the failure: the error itself when one image failed, else one line
    naming the first :data:`SHOWN_FAILURES` and counting the others. A folder run lists every
    failure in ``OUTPUT/_failures.json`` (``[{"image", "error"}]``), and removes that list once
    a run has none to list."""
    failures = [(job, o) for job, o in zip(jobs, outcomes, strict=True) if isinstance(o, Exception)]
    listing = _failures_file(jobs)
    if len(failures) == 1:
        _list_failures(listing, [])
        raise failures[0][1]
    if not failures:
        _list_failures(listing, [])
        return [o for o in outcomes if isinstance(o, SegmentReport)]
    shown = "; ".join(
        f"{Path(job.source).name}: {_short(error, 200)}" for job, error in failures[:SHOWN_FAILURES]
    )
    rest = len(failures) - SHOWN_FAILURES
    more = ""
    if rest > 0:
        written = _list_failures(listing, failures)
        more = f"; and {rest:,} more" + (f" (every one in {written})" if written else "")
    else:
        _list_failures(listing, [])
    raise UNetError(f"{len(failures):,} of {len(jobs):,} images failed: {shown}{more}")


def _failures_file(jobs: list[ImageJob]) -> Path | None:
    """``OUTPUT/_failures.json`` of a local folder run (its masks' common folder), else None."""
    folders = {str(Path(job.output).parent) for job in jobs}
    if len(jobs) < 2 or len(folders) != 1 or any("://" in job.output for job in jobs):
        return None
    return Path(folders.pop()) / FAILURES_FILE


def _list_failures(path: Path | None, failures: list[tuple[ImageJob, Exception]]) -> str | None:
    """Write ``failures`` to ``path`` (or remove a list of an earlier run when there are none);
    the path written, or None. Only a JSON file there is replaced (:mod:`unet.io.replace`), and
    a list that cannot be written costs the run nothing but the list."""
    import json

    from unet.io.replace import check_replaceable

    if path is None:
        return None
    try:
        exists = check_replaceable(path, "json", what="list of failed images")
        if not failures:
            if exists:
                path.unlink()
            return None
        rows = [{"image": job.source, "error": " ".join(str(e).split())} for job, e in failures]
        path.write_text(json.dumps(rows, indent=1) + "\n")
    except (OSError, UNetError) as error:
        log.warning("the failed images could not be listed in %s: %s", path, error)
        return None
    return str(path)
