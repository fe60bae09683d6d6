"""Shared fixtures: small random models that run in milliseconds on a CPU, one Dask cluster, one
Prefect server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from testdata import free_port, make_model


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    import torch

    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def client():
    """One Dask LocalCluster (2 worker processes on 127.0.0.1) shared by the engine tests."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        Client(cluster) as dask_client,
    ):
        yield dask_client


@pytest.fixture
def small_model():
    return make_model()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


PREFECT_STARTUP_SECONDS = 180


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """(API URL, environment for commands using it) of a real ``prefect server start``, one per
    session (tests/flows): on a free port of 127.0.0.1, with its own PREFECT_HOME and SQLite
    database in a temporary folder."""
    import httpx

    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    env.pop("PREFECT_API_URL", None)
    log = (home / "server.log").open("w")
    process = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("prefect")),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + PREFECT_STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"prefect server exited: {(home / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("prefect server did not answer /api/health in time")
            time.sleep(0.3)
        yield url, {**env, "PREFECT_API_URL": url, "PYTHONUNBUFFERED": "1"}
    finally:
        from testdata import stop_group  # testdata imports this module

        stop_group(process, 20)
        log.close()
