"""The flows: segment one image, or every image of a folder.

A recipe per image: ingest (files that are not Zarr), segment (Dask, one task per chunk inside the
engine), check the pyramid, make a preview. Outputs already complete with the same fingerprint
are skipped before any cluster starts, so a scheduled run over a watched folder processes only
new images. One Dask cluster (a LocalCluster sized by the parameters, or the scheduler they name)
serves every image of a run, started at the first image that needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.recording import best_effort
from flows.tasks import (
    artifact_key,
    check_pyramid,
    ingest_image,
    make_preview,
    segment_chunks,
)
from unet.config import SegmentParameters
from unet.engine.report import SegmentReport
from unet.runs import ImageJob, Steps, collect_reports, folder_jobs, image_job, run_jobs

#: The defaults of every field (the model is frozen, so one instance serves every call).
DEFAULT_PARAMETERS = SegmentParameters()


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
    return collect_reports([job], _segment_images([job], parameters))[0]


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
        best_effort(
            create_table_artifact,
            table=[_folder_row(job, outcome) for job, outcome in zip(jobs, outcomes, strict=True)],
            key=f"{artifact_key(Path(output).name)}-folder",
            description=f"Images of {input} segmented into {output}",
        )
    else:
        get_run_logger().info("no images in %s", input)
    return collect_reports(jobs, outcomes)


def _segment_images(
    jobs: list[ImageJob], parameters: SegmentParameters
) -> list[SegmentReport | Exception]:
    """Per job, in order, its report or the error that stopped it, each step a task run."""
    return run_jobs(jobs, parameters, steps=TASK_STEPS, logger=get_run_logger())


def _finish(job: ImageJob, parameters: SegmentParameters) -> None:
    check_pyramid(job.output)
    preview = make_preview(job.zarr_input, job.output, parameters, return_state=True)
    if preview.is_failed():
        raise RuntimeError(preview.message)


#: The steps of one image as Prefect tasks (see :class:`unet.runs.Steps`).
TASK_STEPS = Steps(
    ingest=lambda job: ingest_image(job.source, job.zarr_input, overwrite=True),
    segment=lambda job, parameters, client, progress: segment_chunks(
        job.zarr_input, job.output, parameters, client
    ),
    finish=_finish,
)


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
