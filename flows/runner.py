"""Run ``unet segment`` on one image or a folder: tracked by Prefect when a server is configured,
else without Prefect.

With a Prefect server configured (``PREFECT_API_URL`` in the environment or the active Prefect
profile) that answers, the run is a flow run there (``segment-image``, or ``segment-folder`` for
a folder; see :mod:`flows.segment`) with its task runs, logs, progress, summary and preview
artifacts. Without one, the same jobs and steps run without Prefect (:func:`unet.runs.run_jobs`),
and ``prefect`` is not even imported: a local run costs no server start-up and no server's
memory. It says so once on stderr when it succeeded, with how to track it; a configured server
that does not answer gets the same untracked run and a warning. The terminal shows a progress bar (on a TTY)
and the summary, not Prefect's logs.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from flows.settings import START_SERVER
from unet.config import SegmentParameters
from unet.engine.plan import RunPlan
from unet.engine.progress import Callbacks, RunSettings
from unet.engine.report import SegmentReport
from unet.io.folder import INGEST_SUFFIXES
from unet.runs import is_folder

#: Seconds to wait for the configured Prefect server's health check.
HEALTH_TIMEOUT = 5.0

#: The origin's tag of the flow runs ``unet segment`` starts (beside ``flows.names.RUN_TAG``).
CLI_TAG = "cli"

#: Said once when no server is configured.
UNTRACKED = (
    "note: no Prefect server is configured (PREFECT_API_URL), so this run is not tracked; "
    f"to see runs in the Prefect UI, start one ({START_SERVER}) and set "
    "PREFECT_API_URL=http://127.0.0.1:4200/api"
)


def run_segment(
    input: str, output: str, parameters: SegmentParameters, *, progress: bool = False
) -> list[SegmentReport]:
    """Segment ``input`` (an image or a folder of images) into ``output``; one report per image.

    Raises the errors of :func:`unet.runs.segment`, the early ones (missing input or checkpoint,
    invalid tile size, output inside the input, output locked by another run) before any
    cluster or Prefect starts.
    """
    from flows.settings import FEW_RETRIES, QUIET_CONSOLE, apply_defaults, configured_api_url

    apply_defaults({**QUIET_CONSOLE, **FEW_RETRIES})
    folder = is_folder(input)
    plans = _check_early(input, output, parameters, folder)
    url = configured_api_url()
    if url is None:
        reports = _run_untracked(input, output, parameters, folder, plans, progress)
        # Said once the run succeeded: a failed run's one line is its error.
        _say(UNTRACKED)
        return reports
    problem = _health_problem(url)
    if problem is not None:
        _say(
            f"warning: the Prefect server at {url} does not answer ({problem}): this run goes "
            f"on without Prefect, so it is not recorded there. Start the server ({START_SERVER})"
            " or unset PREFECT_API_URL."
        )
        return _run_untracked(input, output, parameters, folder, plans, progress)
    return _run_tracked(input, output, parameters, folder, plans, progress, url)


def _run_untracked(
    input: str,
    output: str,
    parameters: SegmentParameters,
    folder: bool,
    plans: list[RunPlan],
    progress: bool,
) -> list[SegmentReport]:
    from unet.runs import collect_reports, folder_jobs, image_job, image_name, run_jobs

    jobs = folder_jobs(input, output) if folder else [image_job(input, output)]
    names = {job.output: image_name(job.source) for job in jobs}
    with _terminal(progress) as terminal:
        outcomes = run_jobs(jobs, parameters, progress=_PerOutput(terminal, names), plans=plans)
    return collect_reports(jobs, outcomes)


def _run_tracked(
    input: str,
    output: str,
    parameters: SegmentParameters,
    folder: bool,
    plans: list[RunPlan],
    progress: bool,
    url: str,
) -> list[SegmentReport]:
    from prefect import tags

    from flows.handoff import planned, terminal_progress
    from flows.heartbeats import ensure_crash_automation
    from flows.names import RUN_TAG
    from flows.recording import is_server_problem, recording
    from flows.segment import segment_folder, segment_image

    ensure_crash_automation()  # a run killed from now on is marked Crashed, not Running
    run_flow = segment_folder if folder else segment_image
    with (
        recording(url) as record,
        _terminal(progress) as terminal,
        terminal_progress(terminal),
        planned(plans, parameters),
        tags(RUN_TAG, CLI_TAG),
    ):
        try:
            state = run_flow(input, output, parameters, return_state=True)
        except Exception as error:
            if not is_server_problem(error):
                raise
            record.fail(error)  # the run's end could not be recorded: the outputs say how it went
            state = None
    if record.lost is not None:
        _say(
            f"warning: the Prefect server at {url} stopped answering during the run "
            f"({record.lost}): its record of this run is incomplete; the results on disk are "
            "not affected"
        )
    else:
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


def _check_early(
    input: str, output: str, parameters: SegmentParameters, folder: bool
) -> list[RunPlan]:
    """Refuse in a second what the engine would refuse at its start, before anything starts;
    return the plan of a Zarr image, which its segment step then runs.

    A missing input or checkpoint, an invalid tile size, an output that would replace the input
    or something unet did not write, or one locked by another run then cost no cluster or server
    start-up. The checkpoint is loaded once per
    process (:func:`unet.engine.plan.driver_checkpoint`), here for the whole run.
    """
    from unet.engine.lock import check_unlocked
    from unet.engine.plan import driver_checkpoint, plan_run
    from unet.errors import InputNotFound
    from unet.io.locations import check_readable
    from unet.runs import check_job, check_reachable, image_job

    check_reachable(input, output, parameters)

    image_file = "://" not in input and Path(input).suffix.lower() in INGEST_SUFFIXES
    if image_file and not Path(input).exists():
        raise InputNotFound(f"input {input} does not exist: check the path")
    if "://" not in input:
        check_readable(input)
    if image_file:
        check_job(image_job(input, output), parameters)
    if folder or image_file:
        checkpoint = driver_checkpoint(parameters.model)
        if parameters.tile_size is not None:
            checkpoint.model.geometry.check_tile_size(parameters.tile_size)
        return []
    plan = plan_run(input, output, parameters)
    check_job(image_job(input, output), parameters)
    check_unlocked(output)
    return [plan]


def _health_problem(url: str) -> str | None:
    """Why the server at ``url`` cannot take runs, or None when it answers."""
    import httpx

    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=HEALTH_TIMEOUT).raise_for_status()
    except httpx.HTTPError as error:
        return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return None


def _flow_run_url(flow_run_id) -> str:
    from prefect.settings import PREFECT_UI_URL

    return f"{PREFECT_UI_URL.value()}/runs/flow-run/{flow_run_id}"


def _say(message: str) -> None:
    print(message, file=sys.stderr)


#: Given an image's name, its progress callback on the terminal.
ProgressFactory = Callable[[str], Callbacks]


class _PerOutput:
    """A run's ``progress(output, done, total)`` (and ``started``, ``instances``, ``finished``,
    ``close`` with the output first) drawing each image on the terminal through a callback made at its first
    call, named ``names[output]``."""

    def __init__(self, factory: ProgressFactory, names: dict[str, str]) -> None:
        self.factory, self.names = factory, names
        self.callbacks: dict[str, Callbacks] = {}
        self.lock = threading.Lock()

    def of(self, output: str) -> Callbacks:
        with self.lock:
            if output not in self.callbacks:
                self.callbacks[output] = self.factory(self.names.get(output, output))
            return self.callbacks[output]

    def __call__(self, output: str, done: int, total: int) -> None:
        self.of(output)(done, total)

    def started(self, output: str, settings: RunSettings) -> None:
        self.of(output).started(settings)

    def instances(self, output: str, round: int, done: int, total: int) -> None:
        self.of(output).instances(round, done, total)

    def finished(self, output: str, report: SegmentReport) -> None:
        self.of(output).finished(report)

    def close(self, output: str) -> None:
        self.of(output).close()


@contextlib.contextmanager
def _terminal(bar: bool) -> Iterator[ProgressFactory]:
    """A factory of per-image progress callbacks for the terminal: the run's settings, progress
    and result as lines on stderr (:class:`~unet.engine.progress.ProgressLog`, the lines a
    tracked run logs) and, when ``bar``, a rich progress bar."""
    from unet.engine.progress import ProgressLog, combine

    if not bar:
        yield lambda name: combine(ProgressLog(name, _say))
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    # Lines printed meanwhile show above the bars (rich redirects stderr while it draws).
    with Progress(*columns, transient=False) as bars:

        def callbacks_for(name: str) -> Callbacks:
            task = bars.add_task(name, total=None)
            return combine(
                lambda done, total: bars.update(task, completed=done, total=total),
                ProgressLog(name, _say),
            )

        yield callbacks_for
