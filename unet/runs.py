"""A run of ``unet segment`` without Prefect: one image or every image of a folder.

The recipe per image is: ingest (a TIFF, SVS, PNG or JPEG file becomes OME-Zarr in
``<output folder>/_ingested/``), skip it when its mask is complete with the same fingerprint,
segment it on Dask, and write ``<name>.preview.png`` beside the mask. One Dask cluster serves
every image of a run, started at the first image that needs computing; in a folder one failing
image does not stop the others, and the run fails at the end naming them.

The Prefect flows (``flows/segment.py``) run the same jobs, with each step recorded as a task.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unet.config import SegmentParameters, validated
from unet.engine.report import SegmentReport
from unet.errors import InvalidParameter, UNetError, UnsupportedInput
from unet.io.folder import INGEST_SUFFIXES, INGESTED_DIR, is_zarr_store, list_images

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
    """The job of a single image; a local TIFF/PNG/JPEG is ingested next to the output."""
    if "://" not in input and Path(input).suffix.lower() in INGEST_SUFFIXES:
        name = Path(input).stem
        target = _join(_parent(output), INGESTED_DIR, f"{name}.zarr")
        return ImageJob(input, target, output, needs_ingest=True)
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
    """Whether ``job``'s image file must be (re)ingested: no Zarr copy yet, or ``overwrite``."""
    return job.needs_ingest and (parameters.overwrite or not is_zarr(job.zarr_input))


@dataclass(frozen=True)
class Steps:
    """How the steps of one image run: plain calls by default; the Prefect flows pass their
    tasks, so that each step is recorded.

    ``ingest(job)``; ``segment(job, parameters, client, progress)`` returns the report;
    ``finish(job, parameters)`` checks and previews a segmented image (a failure there is logged,
    the image stays segmented).
    """

    ingest: Callable[[ImageJob], Any]
    segment: Callable[[ImageJob, SegmentParameters, Any, Any], SegmentReport]
    finish: Callable[[ImageJob, SegmentParameters], Any]


def _ingest(job: ImageJob) -> None:
    from unet.io.ingest import ingest

    ingest(job.source, job.zarr_input, overwrite=True, progress=False)


def _segment(
    job: ImageJob, parameters: SegmentParameters, client: Any, progress: Any
) -> SegmentReport:
    from unet.engine.run import segment as segment_image

    return segment_image(job.zarr_input, job.output, parameters, client=client, progress=progress)


def _finish(job: ImageJob, parameters: SegmentParameters) -> None:
    write_preview(job.zarr_input, job.output, parameters)


#: The steps of a run without Prefect.
PLAIN_STEPS = Steps(ingest=_ingest, segment=_segment, finish=_finish)


def run_jobs(
    jobs: list[ImageJob],
    parameters: SegmentParameters,
    *,
    client: Any = None,
    progress: Callable[[str, int, int], None] | None = None,
    steps: Steps = PLAIN_STEPS,
    logger: logging.Logger | logging.LoggerAdapter = log,
) -> list[SegmentReport | Exception]:
    """Per job, in order, its report or the error that stopped it; one failure stops no other."""
    from unet.engine.cluster import dask_client, plan_cluster
    from unet.engine.finished import finished_report

    outcomes: list[SegmentReport | Exception] = []
    with contextlib.ExitStack() as cluster:
        for job in jobs:
            try:
                if needs_ingest(job, parameters):
                    steps.ingest(job)
                finished = finished_report(job.zarr_input, job.output, parameters)
                if finished is not None:
                    logger.info("%s is complete with these settings: skipped", job.output)
                    outcomes.append(finished)
                    continue
                if client is None:
                    plan = plan_cluster(parameters.device, parameters.workers, parameters.scheduler)
                    client = cluster.enter_context(dask_client(plan, parameters.scheduler))
                callback = None
                if progress is not None:
                    callback = functools.partial(progress, job.output)
                report = steps.segment(job, parameters, client, callback)
            except Exception as error:  # one image's failure, whatever it is, stops no other
                logger.error("%s failed: %s", job.source, error)
                outcomes.append(error)
                continue
            outcomes.append(report)
            try:
                steps.finish(job, parameters)
            except Exception as error:
                logger.warning("no preview for %s: %s", job.output, error)
    return outcomes


def write_preview(input: str, output: str, parameters: SegmentParameters) -> str:
    """Write ``<name>.preview.png`` beside the mask at ``output``; return its path."""
    from unet.results.preview import preview_path, render_preview, write_bytes

    path = preview_path(output, image=input if parameters.labels else None)
    write_bytes(path, render_preview(input, output, channels_last=parameters.channels_last))
    return path


def collect_reports(
    jobs: list[ImageJob], outcomes: list[SegmentReport | Exception]
) -> list[SegmentReport]:
    """The reports, or the failure: the error itself when one image failed, else a summary."""
    failures = [(job, o) for job, o in zip(jobs, outcomes, strict=True) if isinstance(o, Exception)]
    if len(failures) == 1:
        raise failures[0][1]
    if failures:
        listed = "; ".join(f"{Path(job.source).name}: {error}" for job, error in failures)
        raise UNetError(f"{len(failures)} of {len(jobs)} images failed: {listed}")
    return [o for o in outcomes if isinstance(o, SegmentReport)]


def is_zarr(location: str) -> bool:
    """Whether a Zarr v3 group or array is at ``location`` (path or URL)."""
    if "://" not in location:
        return is_zarr_store(Path(location))
    import fsspec

    fs, path = fsspec.core.url_to_fs(location)
    return fs.exists(f"{path.rstrip('/')}/zarr.json")


def _parent(location: str) -> str:
    if "://" in location:
        return location.rstrip("/").rsplit("/", 1)[0]
    return str(Path(location).parent)


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts]) if "://" in base else str(Path(base, *parts))
