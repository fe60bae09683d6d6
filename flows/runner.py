"""Run ``unet segment`` on one image or a folder, as a Prefect flow run.

A folder runs the ``segment-folder`` flow, anything else ``segment-image`` (see :mod:`flows`).
With ``PREFECT_API_URL`` set the run is recorded on that server (logs, progress, summary and
preview artifacts); without it Prefect runs a temporary local server for the run's duration
(ephemeral mode). When the configured server does not answer, the run goes on locally and says so.
The terminal shows a progress bar (on a TTY) and the summary, not Prefect's logs.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from unet.config import SegmentParameters
from unet.engine.plan import RunPlan
from unet.engine.report import SegmentReport
from unet.io.folder import INGEST_SUFFIXES, is_zarr_store

#: Seconds to wait for the configured Prefect server's health check.
HEALTH_TIMEOUT = 5.0


def run_segment(
    input: str, output: str, parameters: SegmentParameters, *, progress: bool = False
) -> list[SegmentReport]:
    """Segment ``input`` (an image or a folder of images) into ``output``; one report per image."""
    from flows.settings import FEW_RETRIES, QUIET_CONSOLE, apply_defaults

    apply_defaults({**QUIET_CONSOLE, **FEW_RETRIES})
    folder = _is_folder(input)
    plans = _check_early(input, output, parameters, folder)
    from flows.handoff import planned, terminal_progress
    from flows.recording import is_server_problem, recording
    from flows.segment import segment_folder, segment_image

    run_flow = segment_folder if folder else segment_image
    with (
        _prefect_api() as server,
        recording(server) as record,
        _progress_bar(progress) as bar,
        terminal_progress(bar),
        planned(plans, parameters),
    ):
        try:
            state = run_flow(input, output, parameters, return_state=True)
        except Exception as error:
            if server is None or not is_server_problem(error):
                raise
            record.fail(error)  # the run's end could not be recorded: the outputs say how it went
            state = None
    if record.lost is not None:
        _say(
            f"warning: the Prefect server at {server or 'PREFECT_API_URL'} stopped answering "
            f"during the run ({record.lost}): its record of this run is incomplete; the results "
            "on disk are not affected"
        )
    elif server:
        _say(f"recorded on Prefect: {_flow_run_url(state.state_details.flow_run_id)}")
    if state is None:
        return _reports_from_outputs(input, output, parameters, folder)
    result = state.result()
    return result if isinstance(result, list) else [result]


def _reports_from_outputs(
    input: str, output: str, parameters: SegmentParameters, folder: bool
) -> list[SegmentReport]:
    """The reports of a run whose end the Prefect server did not take, from its outputs: each
    must be complete with this run's settings."""
    from unet.engine.finished import finished_report
    from unet.errors import ServerUnreachable
    from unet.runs import folder_jobs, image_job

    jobs = folder_jobs(input, output) if folder else [image_job(input, output)]
    reports = [finished_report(job.zarr_input, job.output, parameters) for job in jobs]
    unfinished = [job.output for job, report in zip(jobs, reports, strict=True) if report is None]
    if unfinished:
        raise ServerUnreachable(
            f"the Prefect server stopped answering and {', '.join(unfinished)} did not finish: "
            "rerun the same command to resume"
        )
    return [report for report in reports if report is not None]


def _is_folder(input: str) -> bool:
    path = Path(input)
    return "://" not in input and path.is_dir() and not is_zarr_store(path)


def _check_early(
    input: str, output: str, parameters: SegmentParameters, folder: bool
) -> list[RunPlan]:
    """Refuse in a second what the engine would refuse at its start, before Prefect starts;
    return the plan of a Zarr image, which the flow's segment task then runs.

    A missing input or checkpoint, an invalid tile size, an output inside the input or locked by
    another run then cost no server start-up. The checkpoint is loaded once per process
    (:func:`unet.engine.plan.driver_checkpoint`), here for the whole run.
    """
    from unet.engine.lock import check_unlocked
    from unet.engine.plan import driver_checkpoint, plan_run
    from unet.errors import InputNotFound

    image_file = "://" not in input and Path(input).suffix.lower() in INGEST_SUFFIXES
    if image_file and not Path(input).is_file():
        raise InputNotFound(f"input {input} does not exist: check the path")
    if folder or image_file:
        checkpoint = driver_checkpoint(parameters.model)
        if parameters.tile_size is not None:
            checkpoint.model.geometry.check_tile_size(parameters.tile_size)
        return []
    plan = plan_run(input, output, parameters)
    check_unlocked(output)
    return [plan]


@contextlib.contextmanager
def _prefect_api() -> Iterator[str | None]:
    """The configured Prefect API URL when its server answers, else None (ephemeral mode)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        yield None
        return
    problem = _health_problem(url)
    if problem is None:
        from flows.heartbeats import ensure_crash_automation

        ensure_crash_automation()  # a run killed from now on is marked Crashed, not Running
        yield url
        return
    _say(
        f"warning: the Prefect server at {url} does not answer ({problem}): running locally "
        "in Prefect's ephemeral mode, so this run is not recorded there. Start the server "
        "(prefect server start) or unset PREFECT_API_URL."
    )
    with _without_api_url():
        yield None


def _health_problem(url: str) -> str | None:
    """Why the server at ``url`` cannot take runs, or None when it answers."""
    import httpx

    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=HEALTH_TIMEOUT)
    except httpx.HTTPError as error:
        return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return None


@contextlib.contextmanager
def _without_api_url() -> Iterator[None]:
    """Prefect settings (and the environment its ephemeral server inherits) without the API URL."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_ENABLED,
        temporary_settings,
    )

    saved = os.environ.pop("PREFECT_API_URL", None)
    try:
        with temporary_settings(
            updates={PREFECT_SERVER_EPHEMERAL_ENABLED: True}, restore_defaults={PREFECT_API_URL}
        ):
            yield
    finally:
        if saved is not None:
            os.environ["PREFECT_API_URL"] = saved


def _flow_run_url(flow_run_id) -> str:
    from prefect.settings import PREFECT_UI_URL

    return f"{PREFECT_UI_URL.value()}/runs/flow-run/{flow_run_id}"


def _say(message: str) -> None:
    print(message, file=sys.stderr)


@contextlib.contextmanager
def _progress_bar(enabled: bool) -> Iterator[Callable[[str], Callable[[int, int], None] | None]]:
    """A factory of per-image progress callbacks drawing one rich bar each (None when disabled)."""
    if not enabled:
        yield lambda name: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as bar:

        def callback_for(name: str) -> Callable[[int, int], None]:
            task = bar.add_task(name, total=None)
            return lambda done, total: bar.update(task, completed=done, total=total)

        yield callback_for
