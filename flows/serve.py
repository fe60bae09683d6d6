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

from pathlib import Path
from typing import Any

from flows.names import RUN_TAG
from flows.pipelines import Deployment, load_pipelines
from unet.errors import ServerUnreachable, UNetError


def serve(path: Path) -> None:
    """Serve the deployments declared in ``path`` until interrupted.

    Raises
    ------
    ConfigError: the file is invalid (named key, expected value)
    UNetError: no Prefect server is configured
    ServerUnreachable: the configured server does not answer
    """
    pipelines = load_pipelines(path)
    check_server()
    from prefect import serve as prefect_serve

    prefect_serve(*(runner_deployment(d) for d in pipelines.deployments))


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


def runner_deployment(deployment: Deployment) -> Any:
    """The Prefect deployment of ``deployment``: its flow, parameters, schedule, tags, limit."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron, Interval

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
    return flow.to_deployment(
        name=deployment.name,
        description=deployment.description,
        parameters=deployment.parameters.flow_parameters(),
        schedules=schedules,
        tags=list(dict.fromkeys([RUN_TAG, *deployment.tags])),
        concurrency_limit=deployment.concurrency_limit,
        # Import the flows as modules of the installed package, whatever the working directory.
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def check_server() -> str:
    """The configured API URL, after checking that its server answers."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise UNetError(
            "unet serve needs a Prefect server: start one (prefect server start) and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=10)
    except httpx.HTTPError as error:
        raise ServerUnreachable(
            f"the Prefect server at {url} does not answer ({type(error).__name__}): start it "
            "(prefect server start) or fix PREFECT_API_URL"
        ) from None
    return url
