"""Against a real ``prefect server start``: `unet segment` records its runs, serve registers.

One server per module, on a free port of 127.0.0.1, with its own PREFECT_HOME (and SQLite
database) in a temporary folder. The commands run as subprocesses, as a user runs them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from testdata import write_checkpoint, write_image

import flows  # noqa: F401  (Prefect's environment defaults, before prefect is imported)

BIN = Path(sys.executable).parent
STARTUP_SECONDS = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(API URL, environment for commands using it) of a fresh Prefect server."""
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
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
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
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def client_of(url: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url}):
        return get_client(sync_client=True)


def test_unet_segment_records_a_completed_flow_run_with_its_artifacts(server, tmp_path):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    url, env = server
    model = write_checkpoint(tmp_path / "m.safetensors")
    write_image(tmp_path / "in.zarr", (64, 64), (32, 32))
    result = subprocess.run(
        [str(BIN / "unet"), "segment", str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr")]
        + ["--model", model, "--tile-size", "204", "--device", "cpu", "--workers", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "locked" not in result.stderr
    assert "4 chunks computed" in result.stdout
    assert "recorded on Prefect:" in result.stderr

    with client_of(url) as client:
        runs = [r for r in client.read_flow_runs() if r.deployment_id is None]  # not scheduled
        assert len(runs) == 1
        run = runs[0]
        assert run.state.is_completed(), run.state
        assert client.read_flow(run.flow_id).name == "segment-image"
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        )
    by_type = {a.type: a for a in artifacts}
    assert set(by_type) >= {"progress", "table", "markdown"}
    assert by_type["progress"].data == 100.0
    assert "data:image/png;base64," in by_type["markdown"].data
    assert str(run.id) in result.stderr


def test_serve_registers_the_deployments_and_runs_one_started_from_the_server(server, tmp_path):
    url, env = server
    model = write_checkpoint(tmp_path / "m.safetensors", depth=2)
    (tmp_path / "incoming").mkdir()
    write_image(tmp_path / "incoming" / "slide one.zarr", (70, 50), (32, 32))
    config = tmp_path / "pipelines.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            deployments:
              - name: watch-incoming
                flow: segment_folder
                parameters: {{input: incoming, output: masks, device: cpu, model: {model}}}
                schedule: {{interval: 86400, timezone: Europe/Berlin}}
                tags: [watch-folder]
                concurrency_limit: 1
              - name: nightly
                flow: segment_image
                parameters: {{input: a.zarr, output: a-mask.zarr, precision: bf16}}
                schedule: {{cron: "0 2 * * *", timezone: UTC}}
            """
        )
    )
    log = tmp_path / "serve.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [str(BIN / "unet"), "serve", str(config)],
            env={**env, "PREFECT_RUNNER_POLL_FREQUENCY": "2"},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deployments = []
        deadline = time.monotonic() + 120
        with client_of(url) as client:
            while len(deployments) < 2 and time.monotonic() < deadline:
                assert process.poll() is None, log.read_text()
                deployments = client.read_deployments()
                time.sleep(0.5)
            by_name = {d.name: d for d in deployments}
            assert set(by_name) == {"watch-incoming", "nightly"}
            watch, nightly = by_name["watch-incoming"], by_name["nightly"]
            assert client.read_flow(watch.flow_id).name == "segment-folder"
            assert watch.tags == ["watch-folder"]
            assert watch.global_concurrency_limit.limit == 1
            assert watch.parameters["input"] == str((tmp_path / "incoming").resolve())
            assert watch.parameters["parameters"] == {"device": "cpu", "model": model}
            assert "parameters" in watch.parameter_openapi_schema["properties"]
            interval = watch.schedules[0].schedule
            assert interval.interval.total_seconds() == 86400
            assert interval.timezone == "Europe/Berlin"
            assert watch.schedules[0].active
            cron = nightly.schedules[0].schedule
            assert (cron.cron, cron.timezone) == ("0 2 * * *", "UTC")

            # Started from the server (as the UI's Run button does), executed by `unet serve`.
            run = client.create_flow_run_from_deployment(watch.id)
            deadline = time.monotonic() + 180
            while not client.read_flow_run(run.id).state.is_final():
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(1)
            state = client.read_flow_run(run.id).state
            assert state.is_completed(), (state, log.read_text()[-3000:])
            from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            )
            assert {"progress", "table", "markdown"} <= {a.type for a in artifacts}
        assert (tmp_path / "masks" / "slide one.zarr" / "zarr.json").exists()
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_deploy_registers_the_deployments_with_a_work_pool(server, tmp_path):
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.serve import deploy

    url, _ = server
    config = tmp_path / "pipelines.yaml"
    config.write_text(
        "deployments:\n"
        "  - name: pooled\n"
        "    flow: segment_folder\n"
        "    parameters: {input: in, output: out}\n"
        "    schedule: {cron: '30 3 * * 1-5', timezone: Europe/Paris}\n"
    )
    with client_of(url) as client:
        client.create_work_pool(WorkPoolCreate(name="unet-test-pool", type="process"))
    with temporary_settings(updates={PREFECT_API_URL: url}):
        (deployment_id,) = deploy(config, "unet-test-pool")
    with client_of(url) as client:
        deployment = client.read_deployment(deployment_id)
    assert deployment.work_pool_name == "unet-test-pool"
    assert deployment.entrypoint == "flows.segment.segment_folder"
    assert deployment.schedules[0].schedule.cron == "30 3 * * 1-5"
