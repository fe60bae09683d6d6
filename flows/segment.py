"""The flows: segment one image, or every image of a folder.

A recipe per image: ingest (files that are not Zarr), segment (Dask, one task per chunk inside the
engine), check the pyramid, make a preview. Outputs already complete with the same fingerprint
are skipped before any cluster starts, so a scheduled run over a watched folder processes only
new images. One Dask cluster (a LocalCluster sized by the parameters, or the scheduler they name)
serves every image of a run, started at the first image that needs it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.finished import finished_report
from flows.tasks import (
    artifact_key,
    check_pyramid,
    ingest_image,
    make_preview,
    segment_chunks,
)
from unet.config import SegmentParameters
from unet.engine.report import SegmentReport
from unet.errors import InvalidParameter, UNetError, UnsupportedInput
from unet.io.folder import INGEST_SUFFIXES, INGESTED_DIR, is_zarr_store, list_images

#: The defaults of every field (the model is frozen, so one instance serves every call).
DEFAULT_PARAMETERS = SegmentParameters()


@dataclass(frozen=True)
class ImageJob:
    """One image of a run: what the user named, the Zarr image to segment, the mask to write."""

    source: str
    zarr_input: str
    output: str
    needs_ingest: bool


@flow(name="segment-image", validate_parameters=True)
def segment_image(
    input: str, output: str, parameters: SegmentParameters = DEFAULT_PARAMETERS
) -> SegmentReport:
    """Segment one image into an OME-Zarr label image.

    Parameters
    ----------
    input: Zarr / OME-Zarr image (path or fsspec URL), or a TIFF, SVS, PNG or JPEG file, which is
        first ingested into ``<output folder>/_ingested/<name>.zarr``
    output: OME-Zarr label image to write (path or fsspec URL); resumed when unfinished
    parameters: model, tiling, device, precision, Dask cluster, ...
    """
    job = image_job(input, output)
    return _reports([job], _segment_images([job], parameters))[0]


@flow(name="segment-folder", validate_parameters=True)
def segment_folder(
    input: str, output: str, parameters: SegmentParameters = DEFAULT_PARAMETERS
) -> list[SegmentReport]:
    """Segment every image directly inside the folder ``input`` into ``output/<name>.zarr``.

    Images whose mask is complete with the same settings are skipped; an image that fails does
    not stop the others (the run fails at the end, naming them).
    """
    jobs = folder_jobs(input, output)
    outcomes = _segment_images(jobs, parameters)
    if jobs:
        create_table_artifact(
            table=[_folder_row(job, outcome) for job, outcome in zip(jobs, outcomes, strict=True)],
            key=f"{artifact_key(Path(output).name)}-folder",
            description=f"Images of {input} segmented into {output}",
        )
    else:
        get_run_logger().info("no images in %s", input)
    return _reports(jobs, outcomes)


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
            f"folder {input} is a URL: segment_folder lists local folders; "
            "run segment_image per image for object stores"
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


def _segment_images(
    jobs: list[ImageJob], parameters: SegmentParameters
) -> list[SegmentReport | Exception]:
    """Per job, in order, its report or the error that stopped it; one failure stops no other."""
    from unet.engine.cluster import dask_client, plan_cluster

    logger = get_run_logger()
    outcomes: list[SegmentReport | Exception] = []
    with contextlib.ExitStack() as cluster:
        client: Any = None
        for job in jobs:
            try:
                if job.needs_ingest and (parameters.overwrite or not _is_zarr(job.zarr_input)):
                    ingest_image(job.source, job.zarr_input, overwrite=True)
                finished = finished_report(job.zarr_input, job.output, parameters)
                if finished is not None:
                    logger.info("%s is complete with these settings: skipped", job.output)
                    outcomes.append(finished)
                    continue
                if client is None:
                    plan = plan_cluster(parameters.device, parameters.workers, parameters.scheduler)
                    client = cluster.enter_context(dask_client(plan, parameters.scheduler))
                report = segment_chunks(job.zarr_input, job.output, parameters, client)
                check_pyramid(job.output)
            except Exception as error:
                logger.error("%s failed: %s", job.source, error)
                outcomes.append(error)
                continue
            outcomes.append(report)
            preview = make_preview(job.zarr_input, job.output, parameters, return_state=True)
            if preview.is_failed():
                logger.warning("no preview for %s: %s", job.output, preview.message)
    return outcomes


def _reports(
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


def _folder_row(job: ImageJob, outcome: SegmentReport | Exception) -> dict[str, Any]:
    if isinstance(outcome, Exception):
        return {"image": Path(job.source).name, "status": f"failed: {outcome}"}
    report = outcome
    status = "already complete" if report.chunks_resumed == report.chunks_total else "segmented"
    return {
        "image": Path(job.source).name,
        "status": status,
        "size": f"{report.shape[2]} x {report.shape[1]} px",
        "computed": report.chunks_computed,
        "skipped": report.chunks_skipped,
        "resumed": report.chunks_resumed,
        "seconds": round(report.seconds, 1),
        "Mpx/s": round(report.megapixels_per_second, 2),
    }


def _is_zarr(location: str) -> bool:
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
