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
from pathlib import Path
from typing import Any

from flows.names import RUN_TAG
from flows.pipelines import Deployment, load_pipelines
from flows.recording import is_server_problem
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
    for deployment in pipelines.deployments:
        print(f"serving {deployment.name!r} ({deployment.flow}) on {url}; Ctrl-C stops")
    while not _serve_until_stopped(pipelines.deployments):
        _wait_until_answering(url)
        print(f"the Prefect server at {url} answers again: serving", file=sys.stderr)


def _serve_until_stopped(deployments: list[Deployment]) -> bool:
    """Run Prefect's runner on ``deployments``: True once it was stopped (Ctrl-C, SIGTERM),
    False when it lost the server (said on stderr)."""
    import asyncio

    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner

    # What prefect.serve does, with the runner at hand: it says whether a stop was asked for.
    runner = Runner(pause_on_shutdown=True)
    for deployment in deployments:
        runner.add_deployment(runner_deployment(deployment))
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
