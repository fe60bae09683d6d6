"""Servers that do not answer or go away: a Dask scheduler, the Prefect server.

A missing server is one line and exit status 2 within seconds; a Prefect server lost during a
run costs the run nothing but its record on the server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from testdata import free_port, stop_group, write_checkpoint, write_image

BIN = Path(sys.executable).parent
UNET = str(BIN / "unet")


def test_scheduler_where_nothing_listens_is_one_line_exit_2_within_seconds(tmp_path):
    write_image(tmp_path / "in.zarr", (8, 8), (8, 8))
    model = write_checkpoint(tmp_path / "m.safetensors", depth=2)
    scheduler = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = subprocess.run(
        [UNET, "segment", str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr")]
        + ["--model", model, "--scheduler", scheduler],
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.monotonic() - started
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: the Dask scheduler at " + scheduler)
    assert seconds < 20, f"{seconds:.0f} s to say the scheduler does not answer"
    assert not (tmp_path / "out.zarr").exists()


def test_dask_client_of_a_silent_scheduler_raises_server_unreachable():
    from unet.engine.cluster import ClusterPlan, dask_client
    from unet.errors import ServerUnreachable

    started = time.monotonic()
    with pytest.raises(ServerUnreachable, match="does not answer") as caught:
        with dask_client(ClusterPlan(0, None, 0), f"tcp://127.0.0.1:{free_port()}"):
            pass
    assert time.monotonic() - started < 5 and "\n" not in str(caught.value)


class PrefectServer:
    """``prefect server start`` on 127.0.0.1:``port`` with its own PREFECT_HOME; stoppable and
    startable again on the same port and database, as a restart or an outage does."""

    STARTUP_SECONDS = 180

    def __init__(self, home: Path):
        self.home, self.port = home, free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.process: subprocess.Popen | None = None
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }
        self.env.pop("PREFECT_API_URL", None)

    @property
    def client_env(self) -> dict[str, str]:
        """The environment of a command using this server."""
        return {**self.env, "PREFECT_API_URL": self.url, "PYTHONUNBUFFERED": "1"}

    def start(self) -> None:
        import httpx

        with (self.home / "server.log").open("a") as log:
            self.process = subprocess.Popen(
                [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1"]
                + ["--port", str(self.port)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.STARTUP_SECONDS
        while True:
            assert self.process.poll() is None, (self.home / "server.log").read_text()[-2000:]
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "prefect server did not answer in time"
            time.sleep(0.3)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        stop_group(self.process, 30)

    def client(self):
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.url}):
            return get_client(sync_client=True)


@pytest.fixture
def prefect_server(tmp_path):
    import flows  # noqa: F401  (Prefect's environment defaults, before prefect is imported)

    home = tmp_path / "prefect-home"
    home.mkdir()
    server = PrefectServer(home)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def ledger_count(output: Path) -> int:
    return sum(1 for path in (output / "_unet_ledger" / "c").rglob("*") if path.is_file())


def is_complete(output: Path) -> bool:
    import json

    try:
        attributes = json.loads((output / "zarr.json").read_text())["attributes"]
    except (OSError, ValueError, KeyError):
        return False
    return attributes.get("unet", {}).get("complete") is True


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_prefect_server_stopped_during_segment_costs_only_the_record(prefect_server, tmp_path):
    from testdata import assert_same_mask, reference_mask

    raw = write_image(tmp_path / "in.zarr", (512, 512), (32, 32))  # 256 chunks
    model = write_checkpoint(tmp_path / "m.safetensors", depth=2)
    output = tmp_path / "out.zarr"
    started = time.monotonic()
    with (tmp_path / "stderr").open("w") as stderr:
        run = subprocess.Popen(
            [UNET, "segment", str(tmp_path / "in.zarr"), str(output), "--model", model]
            + ["--device", "cpu"],
            env=prefect_server.client_env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    while ledger_count(output) < 8:  # the flow run and its first chunks are running
        assert run.poll() is None, (tmp_path / "stderr").read_text()
        assert time.monotonic() - started < 300
        time.sleep(0.2)
    prefect_server.stop()
    while not is_complete(output) and run.poll() is None:
        time.sleep(0.2)
    complete = time.monotonic()
    stdout, _ = run.communicate(timeout=300)
    ended = time.monotonic()
    stderr = (tmp_path / "stderr").read_text()

    assert run.returncode == 0, stderr[-3000:]
    *progress, warning = [line for line in stderr.splitlines() if line.strip()]
    # The run's own lines (settings, progress, result), then one warning about the record.
    assert all(line.startswith("in: ") for line in progress), stderr[-3000:]
    assert progress[-1].startswith("in: done in ")
    assert warning.startswith("warning: the Prefect server at " + prefect_server.url)
    assert "record of this run is incomplete" in warning
    assert "512 × 512 px (width × height)" in stdout
    assert ended - complete < 30, f"{ended - complete:.0f} s between the mask and the exit"
    expected, near_tie = reference_mask(model, raw[None], 72)
    import zarr

    assert_same_mask(zarr.open_group(str(output), mode="r")["0"][...], expected, near_tie)
    assert (tmp_path / "out.preview.png").exists(), stdout + stderr[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_run_is_marked_crashed_by_the_heartbeat_automation(prefect_server, tmp_path):
    write_image(tmp_path / "in.zarr", (512, 512), (32, 32))
    model = write_checkpoint(tmp_path / "m.safetensors", depth=2)
    output = tmp_path / "out.zarr"
    run = subprocess.Popen(
        [UNET, "segment", str(tmp_path / "in.zarr"), str(output), "--model", model]
        + ["--device", "cpu"],
        env=prefect_server.client_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    started = time.monotonic()
    while ledger_count(output) < 4:
        assert run.poll() is None and time.monotonic() - started < 300
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGKILL)  # as a machine that dies: no goodbye to the server
    run.wait()
    with prefect_server.client() as client:
        (automation,) = client.read_automations()
        assert automation.name.startswith("unet: crash flow runs without a heartbeat")
        (flow_run,) = client.read_flow_runs()
        assert flow_run.state.is_running()
        deadline = time.monotonic() + 240  # 3 heartbeat periods of 30 s, and the trigger's rounds
        while not (state := client.read_flow_run(flow_run.id).state).is_final():
            assert time.monotonic() < deadline, f"still {state.name} after the process died"
            time.sleep(2)
    assert state.is_crashed() and "heartbeat" in state.message


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_unet_serve_survives_a_server_restart(prefect_server, tmp_path):
    write_image(tmp_path / "in.zarr", (40, 40), (32, 32))
    model = write_checkpoint(tmp_path / "m.safetensors", depth=2)
    config = tmp_path / "pipelines.yaml"
    config.write_text(
        "deployments:\n"
        "  - name: one\n"
        "    flow: segment_image\n"
        f"    parameters: {{input: in.zarr, output: out.zarr, model: {model}, device: cpu}}\n"
    )
    log = tmp_path / "serve.log"
    with log.open("w") as output:
        serving = subprocess.Popen(
            [UNET, "serve", str(config)],
            env={**prefect_server.client_env, "PREFECT_RUNNER_POLL_FREQUENCY": "2"},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_for(text: str, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while text not in log.read_text():
            assert serving.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"no {text!r}: {log.read_text()[-3000:]}"
            time.sleep(0.5)

    try:
        wait_for("serving 'one'", 120)
        with prefect_server.client() as client:
            deadline = time.monotonic() + 120
            while not client.read_deployments():
                assert time.monotonic() < deadline
                time.sleep(0.5)
        prefect_server.stop()
        wait_for("stopped answering", 180)
        prefect_server.start()
        wait_for("answers again: serving", 120)
        with prefect_server.client() as client:
            (deployment,) = client.read_deployments()
            run = client.create_flow_run_from_deployment(deployment.id)
            deadline = time.monotonic() + 240
            while not (state := client.read_flow_run(run.id).state).is_final():
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(1)
        assert state.is_completed(), (state, log.read_text()[-3000:])
        assert serving.poll() is None, "unet serve goes on serving"
        assert (tmp_path / "out.zarr" / "zarr.json").exists()
    finally:
        stop_group(serving, 60)


def test_recording_drops_calls_after_the_first_failure_and_counts_lost_deliveries():
    import logging

    from flows.recording import Recording, recording

    calls = []

    def unreachable(*args):
        calls.append(args)
        raise ConnectionRefusedError(111, "Connection refused")

    record = Recording()
    assert record.call(lambda: 7) == 7
    assert record.call(unreachable, 1) is None and record.call(unreachable, 2) is None
    assert calls == [(1,)] and "Connection refused" in record.lost
    with recording() as run:
        logging.getLogger("prefect._internal.concurrency").error(
            "Service %r failed to process item %r", "EventsWorker", "event"
        )
    assert run.lost == "the server did not take the run's events"


@pytest.mark.filterwarnings("ignore:Artifact creation outside of a flow:FutureWarning")
def test_progress_artifact_never_waits_for_a_server_that_does_not_answer():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.progress import ProgressArtifact, Throttle

    with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):
        started = time.monotonic()
        progress = ProgressArtifact("k", "d", throttle=Throttle(interval=0.0))
        for done in range(1, 1001):
            progress(done, 1000)
        calling = time.monotonic() - started
        progress.close()
    assert calling < 1.0, f"{calling:.2f} s in the progress callback"
    assert progress.artifact_id is None and progress.record.lost is not None
