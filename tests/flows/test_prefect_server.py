"""Against a real ``prefect server start``: `unet segment` records its runs, serve registers.

The session's server (``prefect_server`` of tests/conftest.py). The commands run as subprocesses, as a user
runs them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from testdata import write_checkpoint, write_image

import flows  # noqa: F401  (Prefect's environment defaults, before prefect is imported)
import unet
from flows.names import output_key
from flows.segment import FOLDER_COLUMNS

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def client_of(url: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url}):
        return get_client(sync_client=True)


def artifacts_of(client, flow_run_id) -> dict[str, object]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    found = client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    )
    # Keyless ones are Prefect's own records of where a failed run's result is stored.
    return {artifact.key: artifact for artifact in found if artifact.key is not None}


def task_runs_of(client, flow_run_id) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    )


def wait_until_final(client, flow_run_id, log: Path, seconds: float = 180):
    deadline = time.monotonic() + seconds
    while not (run := client.read_flow_run(flow_run_id)).state.is_final():
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(1)
    return run


@pytest.mark.timeout(400)  # the session server may start in this test
def test_unet_segment_of_a_folder_records_named_runs_keyed_artifacts_and_its_failure(
    prefect_server, tmp_path
):
    """Two images segmented, one failing: names, tags, version, keys, the failure table."""
    url, env = prefect_server
    model = write_checkpoint(tmp_path / "m.safetensors")
    folder = tmp_path / "cells"
    write_image(folder / "a.zarr", (64, 64), (32, 32))
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48), np.uint8)).save(
        folder / "b.png"
    )
    write_image(folder / "c.zarr", (3, 32, 32), (3, 32, 32))  # 3 channels, the model takes 1
    masks = tmp_path / "masks"
    result = subprocess.run(
        [str(BIN / "unet"), "segment", str(folder), str(masks)]
        + ["--model", model, "--tile-size", "204", "--device", "cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 2, result.stderr
    assert "recorded on Prefect:" in result.stderr and "not tracked" not in result.stderr
    assert "error: " in result.stderr and "3 channels" in result.stderr

    with client_of(url) as client:
        runs = [r for r in client.read_flow_runs() if r.deployment_id is None]
        (run,) = [r for r in runs if r.name == "cells → masks: 2 new, 1 failed"]
        assert str(run.id) in result.stderr
        assert run.state.is_failed() and "ChannelMismatch" in run.state.message
        assert client.read_flow(run.flow_id).name == "segment-folder"
        assert {"unet", "cli"} <= set(run.tags) and run.flow_version == unet.__version__
        tasks = task_runs_of(client, run.id)
        artifacts = artifacts_of(client, run.id)
    assert sorted(t.name for t in tasks) == [
        "ingest b",
        "preview a",
        "preview b",
        "pyramid a",
        "pyramid b",
        "segment a",
        "segment b",
        "segment c",
    ]
    assert all("unet" in t.tags for t in tasks)
    failed = [t for t in tasks if t.state.is_failed()]
    assert [t.name for t in failed] == ["segment c"]
    expected = {
        output_key(str(masks / f"{name}.zarr"), kind)
        for name in "ab"
        for kind in ("progress", "summary", "preview")
    }
    expected |= {output_key(str(masks / "c.zarr"), "progress"), output_key(str(masks), "folder")}
    assert set(artifacts) == expected
    assert artifacts[output_key(str(masks / "a.zarr"), "progress")].data == 100.0
    preview = artifacts[output_key(str(masks / "b.zarr"), "preview")].data
    assert "data:image/png;base64," in preview
    summary = json.loads(artifacts[output_key(str(masks / "b.zarr"), "summary")].data)
    assert summary[0] == {"field": "input", "value": str(folder / "b.png")}
    rows = json.loads(artifacts[output_key(str(masks), "folder")].data)
    assert [list(row) for row in rows] == [list(FOLDER_COLUMNS)] * 3
    assert [row["status"] for row in rows] == ["segmented", "segmented", "failed"]
    assert rows[0]["computed"] == 4 and rows[2]["computed"] == ""
    assert rows[2]["error"].startswith("ChannelMismatch: ")


@pytest.mark.timeout(400)
def test_the_repositorys_pipelines_serve_and_the_watch_folder_runs_out_of_the_box(
    prefect_server, tmp_path
):
    """pipelines.yaml as cloned: both deployments registered; watch-incoming, triggered from the
    server, completes although data/incoming does not exist, and segments what is put there."""
    url, env = prefect_server
    config = tmp_path / "pipelines.yaml"
    shutil.copy(REPO / "pipelines.yaml", config)
    incoming = tmp_path / "data" / "incoming"
    log = tmp_path / "serve.log"
    # A machine without the s3 credentials and the Dask scheduler nightly-slide needs.
    no_aws = {
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    bare = {k: v for k, v in env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE")}
    with log.open("w") as output:
        process = subprocess.Popen(
            [str(BIN / "unet"), "serve", str(config)],
            env={**bare, **no_aws, "PREFECT_RUNNER_POLL_FREQUENCY": "2"},
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
            assert set(by_name) == {"watch-incoming", "nightly-slide"}
            watch, nightly = by_name["watch-incoming"], by_name["nightly-slide"]
            assert client.read_flow(watch.flow_id).name == "segment-folder"
            assert watch.tags == ["unet", "watch-folder"]
            assert watch.global_concurrency_limit.limit == 1
            assert watch.parameters["input"] == str(incoming)
            assert watch.parameters["parameters"] == {
                "model": "nuclei",
                "device": "auto",
                "skip_background": True,
            }
            form = watch.parameter_openapi_schema
            assert all(form["properties"][name].get("description") for name in form["properties"])
            # The form: a choice of models, optional settings without a "None" alternative.
            settings = form["definitions"]["SegmentParameters"]["properties"]
            assert settings["model"]["anyOf"][0]["enum"] == ["nuclei", "satellite"]
            assert (
                "anyOf" not in settings["tile_size"] and settings["tile_size"]["type"] == "integer"
            )
            # The page says what pipelines.yaml says, the schedule's time zone, and why a
            # deployment cannot run here, before anyone triggers it.
            assert watch.description.startswith("Segment new images dropped into data/incoming.")
            assert "Europe/Berlin time zone" in watch.description
            assert "Cannot run" not in watch.description
            assert nightly.description.startswith("**Cannot run on this machine as it is**")
            assert "\n\nSegment the slide s3://slides/slide-001.zarr" in nightly.description
            assert "no credentials to reach s3://slides/slide-001.zarr" in nightly.description
            assert "tcp://dask-scheduler:8786 does not answer" in nightly.description
            interval = watch.schedules[0].schedule
            assert interval.interval.total_seconds() == 900
            assert interval.timezone == "Europe/Berlin"
            assert watch.schedules[0].active
            cron = nightly.schedules[0].schedule
            assert (cron.cron, cron.timezone) == ("0 2 * * *", "Europe/Berlin")

            # Started from the server (as the UI's Run button does), executed by `unet serve`.
            first = client.create_flow_run_from_deployment(watch.id)
            run = wait_until_final(client, first.id, log)
            assert run.state.is_completed(), (run.state, log.read_text()[-3000:])
            assert run.name == "incoming → masks: nothing new" and "watch-folder" in run.tags
            assert incoming.is_dir()

            write_image(incoming / "slide one.zarr", (70, 50), (32, 32))
            second = client.create_flow_run_from_deployment(watch.id)
            run = wait_until_final(client, second.id, log)
            assert run.state.is_completed(), (run.state, log.read_text()[-3000:])
            assert run.name == "incoming → masks: 1 new"
            mask = tmp_path / "data" / "masks" / "slide one.zarr"
            assert set(artifacts_of(client, run.id)) == {
                output_key(str(mask), kind) for kind in ("progress", "summary", "preview")
            } | {output_key(str(mask.parent), "folder")}
            # Triggered anyway: it fails saying what is missing, in one line, no traceback.
            third = client.create_flow_run_from_deployment(nightly.id)
            run = wait_until_final(client, third.id, log)
            assert run.state.is_failed()
            assert run.state.message.startswith(
                "MissingCredentials: no credentials to reach s3://slides/slide-001.zarr: set "
            )
            assert "tcp://dask-scheduler:8786 does not answer" in run.state.message
        assert (mask / "zarr.json").exists()
        served = log.read_text()
        assert "Traceback" not in served, served[-3000:]
        assert "warning: 'nightly-slide' cannot run on this machine now: no credentials" in served
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_deploy_registers_the_deployments_with_a_work_pool(prefect_server, tmp_path):
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.serve import deploy

    url, _ = prefect_server
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
