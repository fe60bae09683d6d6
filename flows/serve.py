"""Put the deployments of a pipelines.yaml on the Prefect server.

:func:`serve` (``unet serve PIPELINES``): every deployment appears in the UI with its schedule
and parameters and can be started from there; this process polls for due runs and executes them
(``prefect.serve``) until stopped, when it pauses their schedules.

:func:`deploy` registers the same deployments with a work pool instead: the server schedules
them, and any ``prefect worker start --pool NAME`` on a machine with this package installed (or
the Docker image, for a Docker pool) executes them. No process of ours needs to stay up.

The server is the one ``PREFECT_API_URL`` names: deployments need a server that outlives this
process, so there is no ephemeral fallback here.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flows.form import form_schema
from flows.names import RUN_TAG
from flows.pipelines import Deployment, load_pipelines
from flows.recording import is_server_problem
from flows.settings import START_SERVER
from unet.errors import ServerUnreachable, UNetError


def serve(path: Path) -> None:
    """Serve the deployments declared in ``path`` until interrupted.

    The server may go away meanwhile (a restart, an outage): Prefect's runner then stops, and
    this waits until the server answers again, says so on stderr, and serves again, which
    registers the deployments anew.

    Raises
    ------
    ConfigError: the file is invalid (named key, expected value)
    UNetError: no Prefect server is configured
    ServerUnreachable: the configured server does not answer at the start
    """
    from flows.settings import FEW_RETRIES, apply_defaults

    # Before prefect is imported: a lost server is found in seconds, not minutes.
    apply_defaults(FEW_RETRIES)
    pipelines = load_pipelines(path)
    url = check_server()
    from flows.heartbeats import ensure_crash_automation

    ensure_crash_automation()
    problems = {d.name: machine_problems(d) for d in pipelines.deployments}
    for deployment in pipelines.deployments:
        print(f"serving {deployment.name!r} ({deployment.flow}) on {url}; Ctrl-C stops")
        if problems[deployment.name]:
            print(
                f"warning: {deployment.name!r} cannot run on this machine now: "
                + "; ".join(problems[deployment.name]),
                file=sys.stderr,
            )
    while not _serve_until_stopped(pipelines.deployments, problems):
        _wait_until_answering(url)
        print(f"the Prefect server at {url} answers again: serving", file=sys.stderr)


def _serve_until_stopped(deployments: list[Deployment], problems: dict[str, list[str]]) -> bool:
    """Run Prefect's runner on ``deployments``: True once it was stopped (Ctrl-C, SIGTERM),
    False when it lost the server (said on stderr). ``problems``: why each deployment cannot
    run on this machine, said on its page."""
    import asyncio

    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner

    # What prefect.serve does, with the runner at hand: it says whether a stop was asked for.
    runner = Runner(pause_on_shutdown=True)
    for deployment in deployments:
        runner.add_deployment(runner_deployment(deployment, problems.get(deployment.name, [])))
    try:
        asyncio.run(runner.start())
        return True
    except (KeyboardInterrupt, TerminationSignal):
        return True
    except Exception as error:
        if not is_server_problem(error):
            raise
        reason = " ".join(str(error).split()) or type(error).__name__
    if runner.stopping:  # asked to stop, and the server was away to take the pause
        print(
            f"warning: stopped while the Prefect server did not answer ({reason}): the "
            "deployments' schedules are not paused",
            file=sys.stderr,
        )
        return True
    print(
        f"warning: the Prefect server stopped answering ({reason}): serving again once it answers",
        file=sys.stderr,
    )
    return False


#: Seconds between health checks while the server is away.
WAIT_SECONDS = 5.0


def _wait_until_answering(url: str) -> None:
    import httpx

    while True:
        try:
            if httpx.get(f"{url.rstrip('/')}/health", timeout=WAIT_SECONDS).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(WAIT_SECONDS)


def deploy(path: Path, work_pool: str, image: str | None = None) -> list[Any]:
    """Register the deployments of ``path`` with ``work_pool``; return their ids.

    ``image``: for a Docker work pool, the image its workers start (built beforehand, e.g. from
    this repository's Dockerfile); a process pool runs the flows from the installed package.
    """
    pipelines = load_pipelines(path)
    check_server()
    from prefect import deploy as prefect_deploy

    return prefect_deploy(
        *(runner_deployment(d) for d in pipelines.deployments),
        work_pool_name=work_pool,
        image=image,
        build=False,
        push=False,
        ignore_warnings=True,
    )


def runner_deployment(deployment: Deployment, problems: Sequence[str] = ()) -> Any:
    """The Prefect deployment of ``deployment``: its flow, parameters, schedule, tags, limit,
    its page's description (with the time zone of its schedule, and ``problems``: why it cannot
    run on this machine) and its parameter form (:mod:`flows.form`)."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron, Interval
    from prefect.utilities.callables import ParameterSchema

    from flows.segment import segment_folder, segment_image

    flow = {"segment_image": segment_image, "segment_folder": segment_folder}[deployment.flow]
    schedules = []
    if deployment.schedule is not None:
        when = deployment.schedule
        schedules.append(
            Cron(when.cron, timezone=when.timezone)
            if when.cron is not None
            else Interval(when.interval, timezone=when.timezone)
        )
    parameters = deployment.parameters.flow_parameters()
    # An unset optional setting is left out (its default): the form's fields are not nullable.
    settings = {k: v for k, v in parameters["parameters"].items() if v is not None}
    runner = flow.to_deployment(
        name=deployment.name,
        description=deployment_description(deployment, problems),
        parameters={**parameters, "parameters": settings},
        schedules=schedules,
        tags=list(dict.fromkeys([RUN_TAG, *deployment.tags])),
        concurrency_limit=deployment.concurrency_limit,
        # Import the flows as modules of the installed package, whatever the working directory.
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    # Prefect takes the form's schema from the flow's signature only; this is where it lives.
    schema = runner._parameter_openapi_schema.model_dump()
    runner._parameter_openapi_schema = ParameterSchema(
        **form_schema(schema, model=settings.get("model"))
    )
    return runner


def deployment_description(deployment: Deployment, problems: Sequence[str] = ()) -> str:
    """The text of a deployment's page: why it cannot run on this machine, its
    ``description`` from pipelines.yaml (else what it segments), when it runs in which time
    zone."""
    parameters = deployment.parameters
    target = parameters.output or f"{parameters.input}/labels/{parameters.labels}"
    parts = []
    if problems:  # first: the first thing anyone reads there
        parts.append(
            "**Cannot run on this machine as it is** (checked when `unet serve` started): "
            + "; ".join(problems)
        )
    parts.append(deployment.description or f"Segment {parameters.input} into {target}.")
    when = deployment.schedule
    if when is not None:
        rule = f"cron `{when.cron}`" if when.cron is not None else f"every {_interval(when)}"
        parts.append(
            f"Schedule: {rule} in the {when.timezone} time zone (the schedule card leaves the "
            "zone out; run times show in your browser's time zone)."
        )
    return "\n\n".join(parts)


def machine_problems(deployment: Deployment) -> list[str]:
    """Why ``deployment`` cannot run on this machine now: its remote stores or Dask scheduler
    do not answer (:func:`unet.runs.reachability_problems`), it asks for a GPU this machine
    lacks, its single image does not exist. Each reason is one line; none when it can run."""
    from unet.engine.destination import mask_location
    from unet.io.locations import is_url
    from unet.runs import reachability_problems

    parameters = deployment.parameters
    output = mask_location(parameters.input, parameters.output, parameters.labels)
    problems = [
        str(problem)
        for problem in reachability_problems(parameters.input, output, parameters, scheduler=True)
    ]
    if deployment.flow == "segment_image" and not is_url(parameters.input):
        from pathlib import Path

        if not Path(parameters.input).exists():
            problems.append(f"input {parameters.input} does not exist: check the path")
    if parameters.scheduler is None and parameters.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            problems.append(
                f"device {parameters.device} needs a CUDA GPU and this machine has none: use "
                "device auto or cpu, or a scheduler whose workers have GPUs"
            )
    return problems


def _interval(schedule: Any) -> str:
    from unet.engine.progress import duration

    return duration(schedule.interval.total_seconds())


def check_server() -> str:
    """The configured API URL, after checking that its server answers."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise UNetError(
            f"unet serve needs a Prefect server: start one ({START_SERVER}) and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=10)
    except httpx.HTTPError as error:
        raise ServerUnreachable(
            f"the Prefect server at {url} does not answer ({type(error).__name__}): start it "
            f"({START_SERVER}) or fix PREFECT_API_URL"
        ) from None
    return url
