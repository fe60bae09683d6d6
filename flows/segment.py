"""The flows: segment one image, or every image of a folder.

A recipe per image: ingest (files that are not Zarr), segment (Dask, one task per chunk inside the
engine), check the pyramid, make a preview. Outputs already complete with the same fingerprint
are skipped before any cluster starts, so a scheduled run over a watched folder processes only
new images. One Dask cluster (a LocalCluster sized by the parameters, or the scheduler they name)
serves every image of a run, started at the first image that needs it; several images of a
folder are in flight at once (:func:`unet.runs.run_jobs`).

Runs are named after their input and output, task runs after their image
(:mod:`flows.names`), and carry the package's version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.names import flow_run_name, output_key, summarized
from flows.recording import best_effort
from flows.tasks import check_pyramid, ingest_image, make_preview, segment_chunks
from unet import __version__
from unet.config import SegmentParameters
from unet.engine.report import SegmentReport
from unet.runs import ImageJob, Steps, collect_reports, folder_jobs, image_job, run_jobs
from unet.sizes import shape_label

#: The defaults of every field (the model is frozen, so one instance serves every call).
DEFAULT_PARAMETERS = SegmentParameters()

#: The folder table's columns, in order. Every row has every one (a failed image's are empty
#: but for its error, a segmented image's error is empty): the UI drops a column from every
#: row when one row lacks it.
FOLDER_COLUMNS = (
    "image",
    "status",
    "size",
    "computed",
    "skipped",
    "resumed",
    "seconds",
    "Mpx/s",
    "error",
)


def _run_name() -> str:
    from prefect.runtime import flow_run

    parameters = flow_run.parameters
    return flow_run_name(str(parameters["input"]), str(parameters["output"]))


# The docstrings' "Args:" sections are in Google style, unlike the rest of the package: Prefect
# parses that style (and only that one) into the help text of the deployment's parameter form,
# which renders it as HTML (so no <angle brackets> there).
@flow(
    name="segment-image",
    flow_run_name=_run_name,
    version=__version__,
    validate_parameters=True,
)
def segment_image(
    input: str, output: str, parameters: SegmentParameters = DEFAULT_PARAMETERS
) -> SegmentReport:
    """Segment one image into an OME-Zarr label image.

    Args:
        input: Zarr / OME-Zarr image (path or fsspec URL such as s3://bucket/slide.zarr), or a
            TIFF, SVS, PNG or JPEG file, first ingested into OUTPUT_FOLDER/_ingested/NAME.zarr
        output: OME-Zarr label image to write (path or fsspec URL); an unfinished one is resumed
        parameters: model, tiling, device, precision, Dask cluster: the options of unet segment
    """
    job = image_job(input, output)
    return collect_reports([job], _segment_images([job], parameters))[0]


@flow(
    name="segment-folder",
    flow_run_name=_run_name,
    version=__version__,
    validate_parameters=True,
)
def segment_folder(
    input: str, output: str, parameters: SegmentParameters = DEFAULT_PARAMETERS
) -> list[SegmentReport]:
    """Segment every image directly inside the folder input into output/NAME.zarr.

    Images whose mask is complete with the same settings are skipped; an image that fails does
    not stop the others (the run fails at the end, naming them). A folder that does not exist
    yet is created (a watch folder before its first image), and the run has nothing to do.

    Args:
        input: local folder of images (Zarr / OME-Zarr, TIFF, SVS, PNG, JPEG), watched by a
            scheduled deployment; created when missing
        output: local folder of the masks, one NAME.zarr per image NAME, previews beside them
        parameters: model, tiling, device, precision, Dask cluster: the options of unet segment
    """
    logger = get_run_logger()
    if "://" not in input and not Path(input).exists():
        Path(input).mkdir(parents=True, exist_ok=True)
        logger.warning("folder %s did not exist: created it; put images there to segment", input)
    jobs = folder_jobs(input, output)
    outcomes = _segment_images(jobs, parameters)
    if jobs:
        best_effort(
            create_table_artifact,
            table=[_folder_row(job, outcome) for job, outcome in zip(jobs, outcomes, strict=True)],
            key=output_key(output, "folder"),
            description=f"Images of {input} segmented into {output}",
        )
    else:
        logger.info("no images in %s", input)
    return collect_reports(jobs, outcomes)


def _segment_images(
    jobs: list[ImageJob], parameters: SegmentParameters
) -> list[SegmentReport | Exception]:
    """Per job, in order, its report or the error that stopped it, each step a task run."""
    return run_jobs(jobs, parameters, steps=TASK_STEPS, logger=get_run_logger())


def _finish(job: ImageJob, parameters: SegmentParameters) -> None:
    check_pyramid(job.output, image=job.source)
    preview = make_preview(
        job.zarr_input, job.output, parameters, source=job.source, return_state=True
    )
    if preview.is_failed():
        raise RuntimeError(preview.message)


#: The steps of one image as Prefect tasks (see :class:`unet.runs.Steps`). The segment task
#: finds a plan the runner made through :mod:`flows.handoff` (a plan is no task parameter).
TASK_STEPS = Steps(
    ingest=lambda job: ingest_image(job.source, job.zarr_input, overwrite=True),
    segment=lambda job, parameters, client, progress, plan: segment_chunks(
        job.zarr_input, job.output, parameters, client, source=job.source
    ),
    finish=_finish,
)


def _folder_row(job: ImageJob, outcome: SegmentReport | Exception) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(FOLDER_COLUMNS, "")
    row["image"] = Path(job.source).name
    if isinstance(outcome, Exception):
        row.update(status="failed", error=summarized(outcome))
        return row
    report = outcome
    row.update(
        status="already complete" if report.chunks_resumed == report.chunks_total else "segmented",
        size=shape_label(report.shape),
        computed=report.chunks_computed,
        skipped=report.chunks_skipped,
        resumed=report.chunks_resumed,
        seconds=round(report.seconds, 1),
    )
    row["Mpx/s"] = round(report.megapixels_per_second, 2)
    return row
