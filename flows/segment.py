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
from prefect.states import State

from flows.names import flow_run_name, output_key, summarized
from flows.recording import best_effort
from flows.tasks import check_pyramid, ingest_image, make_preview, segment_chunks
from unet import __version__
from unet.config import SegmentParameters
from unet.engine.report import SegmentReport
from unet.errors import UNetError
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
) -> SegmentReport | State:
    """Segment one image into an OME-Zarr label image.

    Args:
        input: Zarr / OME-Zarr image (path or fsspec URL such as s3://bucket/slide.zarr), or a
            TIFF, SVS, PNG or JPEG file, first ingested into OUTPUT_FOLDER/_ingested/NAME.zarr
        output: OME-Zarr label image to write (path or fsspec URL); an unfinished one is resumed
        parameters: model, tiling, device, precision, Dask cluster: the options of unet segment
    """
    try:
        job = image_job(input, output)
        return collect_reports([job], _segment_images([job], parameters))[0]
    except UNetError as error:
        return failed(error)


@flow(
    name="segment-folder",
    flow_run_name=_run_name,
    version=__version__,
    validate_parameters=True,
)
def segment_folder(
    input: str, output: str, parameters: SegmentParameters = DEFAULT_PARAMETERS
) -> list[SegmentReport] | State:
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
    try:
        jobs = folder_jobs(input, output)
        outcomes = _segment_images(jobs, parameters)
        best_effort(_rename_run, f"{_run_name()}: {what_was_done(outcomes)}")
        if jobs:
            best_effort(
                create_table_artifact,
                table=[_folder_row(job, o) for job, o in zip(jobs, outcomes, strict=True)],
                key=output_key(output, "folder"),
                description=f"Images of {input} segmented into {output}",
            )
        else:
            logger.info("no images in %s", input)
        return collect_reports(jobs, outcomes)
    except UNetError as error:
        return failed(error)


def failed(error: UNetError) -> State:
    """The Failed state of a run stopped by ``error``, a failure the user must fix.

    Its message is the error's one line, without the ``Flow run encountered an exception:``
    Prefect puts first: the UI shows a state message's first 80 or so characters. The
    run's result raises ``error``, as the flow called from Python does.
    """
    from prefect.states import Failed

    return Failed(message=f"{type(error).__name__}: {' '.join(str(error).split())}", data=error)


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


def what_was_done(outcomes: list[SegmentReport | Exception]) -> str:
    """What a folder run did, for its name: ``4 new``, ``2 new, 1 failed``, ``nothing new``."""
    failed = sum(isinstance(outcome, Exception) for outcome in outcomes)
    new = sum(
        isinstance(outcome, SegmentReport) and not already_complete(outcome) for outcome in outcomes
    )
    parts = [f"{new} new"] if new else []
    parts += [f"{failed} failed"] if failed else []
    return ", ".join(parts) or "nothing new"


def already_complete(report: SegmentReport) -> bool:
    """Whether the image's mask was complete before the run (every chunk resumed)."""
    return report.chunks_resumed == report.chunks_total and report.chunks_computed == 0


def _rename_run(name: str) -> None:
    """Rename the current flow run (its name then says what it did)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run.id, name=name)


def _folder_row(job: ImageJob, outcome: SegmentReport | Exception) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(FOLDER_COLUMNS, "")
    row["image"] = Path(job.source).name
    if isinstance(outcome, Exception):
        row.update(status="failed", error=summarized(outcome))
        return row
    report = outcome
    row["size"] = shape_label(report.shape)
    if already_complete(report):  # nothing was done: no counts, no speed
        row["status"] = "already complete"
        return row
    row.update(
        status="segmented",
        computed=report.chunks_computed,
        skipped=report.chunks_skipped,
        resumed=report.chunks_resumed,
        seconds=round(report.seconds, 1),
    )
    if report.chunks_computed:
        row["Mpx/s"] = round(report.megapixels_per_second, 2)
    return row
