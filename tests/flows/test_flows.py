"""The Prefect flows: progress throttling, preview pixels, artifacts, skipping finished outputs.

Flow runs go to the session's Prefect server (tests/conftest.py) and to a small
in-process Dask cluster named as the parameters' ``scheduler``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from PIL import Image
from testdata import free_port, write_checkpoint, write_image

import flows  # noqa: F401  (Prefect's environment defaults, before prefect is imported)
import unet
from flows.handoff import terminal_progress
from flows.names import artifact_key, output_key, output_name
from flows.progress import Throttle, percent
from flows.tasks import report_table
from unet.config import SegmentParameters
from unet.engine.progress import combine
from unet.engine.report import SegmentReport
from unet.errors import ChannelMismatch, InvalidParameter
from unet.results.preview import (
    blend,
    data_uri,
    display_image,
    label_colours,
    mask_overview,
    preview_path,
    resize_nearest,
)

# The session's Prefect server starts in the first test that needs it: up to a minute or two on a
# busy machine.
pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def prefect_api(prefect_server):
    """Flows called in this process record on the session's Prefect server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server[0]}):
        yield prefect_server[0]


@pytest.fixture(scope="module")
def scheduler():
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("model") / "m.safetensors")


def parameters(model: str, scheduler: str, **extra) -> SegmentParameters:
    return SegmentParameters(model=model, tile_size=204, device="cpu", scheduler=scheduler, **extra)


def artifacts_of(flow_run_id) -> dict[str, list]:
    """The artifacts of a flow run (its tasks' included), by type."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    by_type: dict[str, list] = {}
    for artifact in found:
        by_type.setdefault(artifact.type, []).append(artifact)
    return by_type


def runs_of(flow_run_id):
    """The flow run and its task runs' names."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return run, sorted(task.name for task in tasks)


def log_lines(flow_run_id, prefix: str, until: str = " done in ", seconds: float = 20) -> list[str]:
    """The messages of a flow run's logs (its tasks' included) that start with ``prefix``, in
    order, once one containing ``until`` arrived (logs reach the server in the background)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    deadline = time.monotonic() + seconds
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                sort=LogSort.TIMESTAMP_ASC,
            )
            lines = [log.message for log in logs if log.message.startswith(prefix)]
            if any(until in line for line in lines) or time.monotonic() > deadline:
                return lines
            time.sleep(0.5)


# Pure helpers ------------------------------------------------------------------------------


def test_throttle_lets_through_the_first_one_per_interval_and_the_last():
    now = [0.0]
    throttle = Throttle(interval=1.0, clock=lambda: now[0])
    seen = []
    for done, t in [(1, 0.0), (2, 0.5), (3, 0.99), (4, 1.0), (5, 1.2), (6, 2.5), (10, 2.6)]:
        now[0] = t
        if throttle.due(done, 10):
            seen.append(done)
    assert seen == [1, 4, 6, 10]


def test_percent_and_combine():
    assert percent(0, 8) == 0.0
    assert percent(3, 8) == 37.5
    assert percent(9, 8) == 100.0
    assert percent(0, 0) == 100.0
    calls = []
    combine(None, lambda d, t: calls.append(("a", d, t)), lambda d, t: calls.append(("b", d, t)))(
        2, 5
    )
    assert calls == [("a", 2, 5), ("b", 2, 5)]


def test_names_of_outputs_artifacts_and_previews():
    assert output_name("masks/Slide 01.zarr/") == "Slide 01"
    assert output_name("s3://bucket/out.zarr") == "out"
    assert artifact_key("Slide 01.ome") == "slide-01-ome"
    assert artifact_key("__") == "image"
    assert preview_path("masks/a.zarr") == "masks/a.preview.png"
    assert preview_path("s3://b/a.zarr/") == "s3://b/a.preview.png"
    assert preview_path("masks/a") == "masks/a.preview.png"


def test_blend_colours_labels_only_and_keeps_background():
    image = np.full((2, 2, 3), 100, np.uint8)
    labels = np.array([[0, 1], [2, 0]], np.uint8)
    out = blend(image, labels, [(0, 0, 0), (255, 0, 0), (0, 0, 255)], alpha=0.5)
    assert out[0, 0].tolist() == [100, 100, 100]
    assert out[0, 1].tolist() == [178, 50, 50]  # round(100 * 0.5 + 255 * 0.5) = 178 (half to even)
    assert out[1, 0].tolist() == [50, 50, 178]


def test_label_colours_come_from_the_ome_label_metadata():
    from unet.network.checkpoint import default_colours

    attributes = {
        "ome": {
            "image-label": {
                "colors": [
                    {"label-value": 0, "rgba": [0, 0, 0, 0]},
                    {"label-value": 1, "rgba": [10, 20, 30, 255]},
                ]
            }
        }
    }
    colours = label_colours(attributes)
    assert len(colours) == 256 and colours[1] == (10, 20, 30)
    assert label_colours({})[:3] == default_colours(3)


def test_display_image_stretches_grey_and_keeps_rgb():
    grey = np.arange(100, dtype=np.float32).reshape(1, 10, 10) * 1000
    rgb = display_image(grey)
    assert rgb.shape == (10, 10, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[-1, -1].tolist() == [255, 255, 255]
    assert np.array_equal(rgb[..., 0], rgb[..., 2])
    colour = display_image(np.stack([grey[0], grey[0] * 0, grey[0]]))
    assert colour[-1, -1].tolist() == [255, 0, 255]
    assert display_image(np.zeros((1, 3, 3))).max() == 0  # flat: no division by zero


def test_resize_nearest_samples_pixel_centres():
    image = np.arange(4).reshape(2, 2)
    assert resize_nearest(image, (4, 4)).tolist() == [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [2, 2, 3, 3],
        [2, 2, 3, 3],
    ]
    assert resize_nearest(np.arange(16).reshape(4, 4), (2, 2)).tolist() == [[5, 7], [13, 15]]


def test_mask_overview_takes_the_finest_level_that_fits(tmp_path):
    group = zarr.open_group(str(tmp_path / "m.zarr"), mode="w")
    for level, side in enumerate((40, 20, 10)):
        group.create_array(str(level), shape=(side, side), dtype="uint8", fill_value=level)
    assert mask_overview(group, 25).shape == (20, 20)
    assert mask_overview(group, 40)[0, 0] == 0
    strided = mask_overview(group, 4)  # even the coarsest level is larger: read with a stride
    assert strided.shape == (4, 4) and strided[0, 0] == 2


def test_report_table_lists_size_chunks_speed_and_classes():
    report = SegmentReport(
        input="in.zarr",
        output="out.zarr",
        shape=(1, 200, 300),
        chunks_total=6,
        chunks_computed=4,
        chunks_skipped=1,
        chunks_resumed=1,
        seconds=2.0,
        class_names=["background", "nuclei"],
        class_pixels=[45000, 15000],
    )
    rows = {row["field"]: row["value"] for row in report_table(report)}
    assert rows["input"] == "in.zarr" and "ingested as" not in rows
    assert rows["size"] == "300 × 200 px (width × height), 1 channel(s), 0.06 Mpx"
    assert (rows["computed"], rows["skipped (background)"], rows["resumed"]) == ("4", "1", "1")
    assert rows["speed"] == "0.03 Mpx/s"
    assert rows["class nuclei"] == "25.00%"
    assert not any(field.startswith("objects") for field in rows)
    assert not any(field.startswith("input chunks missing") for field in rows)
    rows = {row["field"]: row["value"] for row in report_table(report, "scans/in.png")}
    assert (rows["input"], rows["ingested as"]) == ("scans/in.png", "in.zarr")
    report.input_chunks_missing = 3
    rows = {row["field"]: row["value"] for row in report_table(report)}
    assert rows["input chunks missing (read as fill value)"] == "3"


def test_report_table_gives_the_objects_per_class_with_instances():
    report = SegmentReport(
        input="in.zarr",
        output="out.zarr",
        shape=(1, 20, 30),
        chunks_total=1,
        class_names=["background", "nuclei", "stroma"],
        class_pixels=[500, 80, 20],
        objects_per_class={"nuclei": 12, "stroma": 0},
    )
    rows = {row["field"]: row["value"] for row in report_table(report)}
    assert (rows["objects nuclei"], rows["objects stroma"]) == ("12", "0")


def test_check_pyramid_body_refuses_an_unfinished_output(tmp_path):
    from prefect.logging import disable_run_logger

    from flows.tasks import check_pyramid

    group = zarr.open_group(str(tmp_path / "o.zarr"), mode="w")
    group.attrs["unet"] = {"complete": False}
    with disable_run_logger(), pytest.raises(RuntimeError, match="not marked complete"):
        check_pyramid.fn(str(tmp_path / "o.zarr"))


def test_folder_output_may_not_be_the_input_folder(tmp_path):
    from flows.segment import folder_jobs

    with pytest.raises(InvalidParameter, match="is the input folder"):
        folder_jobs(str(tmp_path), str(tmp_path))


# Flow runs ---------------------------------------------------------------------------------


def test_segment_image_records_artifacts_preview_and_terminal_progress(
    prefect_api, scheduler, model, tmp_path
):
    from flows.segment import segment_image

    write_image(tmp_path / "in.zarr", (96, 96), (32, 32))
    output = tmp_path / "out.zarr"
    bars: dict[str, list] = {}

    def factory(name):
        return lambda done, total: bars.setdefault(name, []).append((done, total))

    with terminal_progress(factory):
        state = segment_image(
            str(tmp_path / "in.zarr"), str(output), parameters(model, scheduler), return_state=True
        )
    report = state.result()
    assert report.chunks_computed == report.chunks_total == 9
    assert bars["in"][-1] == (9, 9)  # named after the image

    artifacts = artifacts_of(state.state_details.flow_run_id)
    assert [a.key for a in artifacts["progress"]] == [output_key(str(output), "progress")]
    assert artifacts["progress"][0].data == 100.0
    table = artifacts["table"][0]
    assert table.key == output_key(str(output), "summary") and "9" in table.data
    (markdown,) = artifacts["markdown"]
    assert markdown.key == output_key(str(output), "preview")
    assert "data:image/png;base64," in markdown.data
    run, task_names = runs_of(state.state_details.flow_run_id)
    assert run.name == "in → out" and run.flow_version == unet.__version__
    assert task_names == ["preview in", "pyramid in", "segment in"]  # the image's name

    # The artifact embeds the very PNG written beside the mask, with the caption drawn into it.
    png = preview_path(str(output))
    with open(png, "rb") as file:
        assert data_uri(file.read()) in markdown.data
    assert "The whole image at full resolution" in markdown.data and png in markdown.data
    with Image.open(png) as preview:
        assert preview.mode == "RGB" and preview.size[0] >= 96 * 2  # enlarged: 96 px is small

    lines = log_lines(state.state_details.flow_run_id, "in: ")
    assert lines[0].startswith("in: 96 × 96 px (width × height); device cpu, precision fp32, ")
    # The workers of the run's scheduler, as they described themselves to the driver.
    assert "tile 204, batch 4, 1 worker of " in lines[0] and "on their CPUs" in lines[0]
    assert lines[0].endswith("9 chunks: 9 to compute, 0 skipped (background), 0 resumed")
    # A line each time another tenth is done: here each task's end (tasks carry several chunks).
    done = [int(line.split(" of 9")[0].removeprefix("in: ")) for line in lines[1:-1]]
    assert done == sorted(set(done)) and done[-1] == 9 and done[0] >= 1
    assert all("Mpx/s, about" in line for line in lines[1:-1])
    assert lines[-1].startswith("in: done in ") and "9 chunks computed" in lines[-1]


def test_a_finished_output_is_skipped_without_starting_dask(
    prefect_api, scheduler, model, tmp_path, monkeypatch
):
    import unet.engine.cluster
    from flows.segment import segment_image

    write_image(tmp_path / "in.zarr", (64, 64), (32, 32))
    args = (str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"))
    first = segment_image(*args, parameters(model, scheduler))
    assert first.chunks_computed == 4

    def no_cluster(*_, **__):
        raise AssertionError("a finished output must not start Dask")

    monkeypatch.setattr(unet.engine.cluster, "dask_client", no_cluster)
    again = segment_image(*args, parameters(model, scheduler))
    assert (again.chunks_resumed, again.chunks_computed) == (4, 0)


def test_segment_folder_ingests_goes_on_after_a_failure_and_names_it(
    prefect_api, scheduler, model, tmp_path
):
    from flows.segment import FOLDER_COLUMNS, segment_folder

    folder = tmp_path / "in"
    folder.mkdir()
    write_image(folder / "a.zarr", (64, 64), (32, 32))
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48), np.uint8)).save(
        folder / "b.png"
    )
    write_image(folder / "c.zarr", (3, 32, 32), (3, 32, 32))  # 3 channels, the model takes 1
    out = tmp_path / "masks"

    state = segment_folder(str(folder), str(out), parameters(model, scheduler), return_state=True)
    with pytest.raises(ChannelMismatch, match="3 channels"):
        state.result()
    assert zarr.open_group(str(out / "a.zarr"), mode="r").attrs["unet"]["complete"]
    assert zarr.open_group(str(out / "b.zarr"), mode="r")["0"].shape == (40, 48)
    assert (out / "_ingested" / "b.zarr").is_dir() and (out / "b.preview.png").is_file()
    (folder_table,) = [
        a
        for a in artifacts_of(state.state_details.flow_run_id)["table"]
        if a.key == output_key(str(out), "folder")
    ]
    rows = json.loads(folder_table.data)
    assert [row["image"] for row in rows] == ["a.zarr", "b.png", "c.zarr"]
    assert all(list(row) == list(FOLDER_COLUMNS) for row in rows)  # every column in every row
    assert rows[2]["status"] == "failed" and rows[2]["size"] == ""
    assert rows[2]["error"].startswith("ChannelMismatch: ") and rows[0]["error"] == ""
    run, task_names = runs_of(state.state_details.flow_run_id)
    assert run.name == "in → masks: 2 new, 1 failed"  # what the run did
    assert state.message.startswith("ChannelMismatch: ")  # the reason first, on the run's state
    assert task_names == [
        "ingest b",
        "preview a",
        "preview b",
        "pyramid a",
        "pyramid b",
        "segment a",
        "segment b",
        "segment c",
    ]
    # The image that failed says so in one line; no traceback.
    messages = log_lines(state.state_details.flow_run_id, "", until="Finished in state Failed")
    assert any("c.zarr failed: " in m and "has 3 channels" in m for m in messages), messages
    assert not any("Traceback" in m or "\n" in m for m in messages)

    # Again: nothing new, the complete images read as such, with no counts and no speed.
    again = segment_folder(str(folder), str(out), parameters(model, scheduler), return_state=True)
    assert runs_of(again.state_details.flow_run_id)[0].name == "in → masks: 1 failed"
    (table,) = [
        a
        for a in artifacts_of(again.state_details.flow_run_id)["table"]
        if a.key == output_key(str(out), "folder")
    ]
    first = json.loads(table.data)[0]
    assert first["status"] == "already complete" and first["size"] == "64 × 64 px (width × height)"
    assert [first[c] for c in ("computed", "skipped", "resumed", "seconds", "Mpx/s")] == [""] * 5


def test_a_remote_store_without_credentials_fails_the_run_in_one_line(
    prefect_api, model, tmp_path, monkeypatch
):
    """The run's state message and log say what to set for the store and that the scheduler
    does not answer either; no traceback."""
    from flows.segment import segment_image

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    closed = f"tcp://127.0.0.1:{free_port()}"
    state = segment_image(
        "s3://slides/slide-001.zarr",
        "s3://masks/slide-001.zarr",
        SegmentParameters(model=model, scheduler=closed),
        return_state=True,
    )
    assert state.is_failed()
    assert state.message.startswith(
        "MissingCredentials: no credentials to reach s3://slides/slide-001.zarr: set "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
    )
    assert f"also the Dask scheduler at {closed} does not answer" in state.message
    messages = log_lines(state.state_details.flow_run_id, "", until="Finished in state Failed")
    # One line in the run's log (the flow's failure; a single image's error is said once).
    assert any("no credentials to reach s3://slides/slide-001.zarr" in m for m in messages)
    assert not any("Traceback" in m or "\n" in m for m in messages), messages


def test_a_scheduler_that_does_not_answer_fails_the_run_in_one_line(prefect_api, model, tmp_path):
    from flows.segment import segment_image

    write_image(tmp_path / "in.zarr", (32, 32), (32, 32))
    closed = f"tcp://127.0.0.1:{free_port()}"
    state = segment_image(
        str(tmp_path / "in.zarr"),
        str(tmp_path / "out.zarr"),
        SegmentParameters(model=model, scheduler=closed),
        return_state=True,
    )
    assert state.is_failed()
    assert state.message.startswith(f"ServerUnreachable: the Dask scheduler at {closed} does not")
    messages = log_lines(state.state_details.flow_run_id, "", until="Finished in state Failed")
    assert not any("Traceback" in m or "\n" in m for m in messages), messages


def test_run_segment_goes_on_untracked_when_the_server_does_not_answer(
    scheduler, model, tmp_path, capsys, monkeypatch
):
    from flows.runner import run_segment

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    write_image(tmp_path / "in.zarr", (32, 32), (32, 32))
    reports = run_segment(
        str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), parameters(model, scheduler)
    )
    assert reports[0].chunks_computed == 1
    message = capsys.readouterr().err
    assert "does not answer" in message and "not recorded there" in message
