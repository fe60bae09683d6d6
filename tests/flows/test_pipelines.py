"""pipelines.yaml: the schema, its one-line errors, path resolution, Prefect deployments."""

from __future__ import annotations

import datetime
import textwrap
from pathlib import Path

import pytest

import flows  # noqa: F401  (Prefect's environment defaults, before prefect is imported)
import unet
from flows.pipelines import load_pipelines
from unet.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

VALID = """
deployments:
  - name: watch
    flow: segment_folder
    parameters:
      input: incoming
      output: ../masks
      model: models/m.safetensors
      tile_size: 508
      workers: 2
    schedule: {interval: 900, timezone: Europe/Berlin}
    tags: [watch-folder]
    concurrency_limit: 1
  - name: nightly
    flow: segment_image
    parameters:
      input: s3://slides/a.zarr
      output: s3://masks/a.zarr
      scheduler: tcp://dask-scheduler:8786
      precision: bf16
    schedule: {cron: "0 2 * * *", timezone: UTC}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf" / "pipelines.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_repository_pipelines_yaml_is_valid():
    pipelines = load_pipelines(REPO / "pipelines.yaml")
    assert {d.flow for d in pipelines.deployments} == {"segment_image", "segment_folder"}
    assert all(d.schedule is not None for d in pipelines.deployments)


def test_valid_file_resolves_local_paths_against_its_folder(tmp_path):
    path = write(tmp_path, VALID)
    watch, nightly = load_pipelines(path).deployments
    folder = path.parent.resolve()
    assert watch.parameters.input == str(folder / "incoming")
    assert watch.parameters.output == str(tmp_path.resolve() / "masks")
    assert watch.parameters.model == str(folder / "models" / "m.safetensors")
    assert watch.schedule.interval == datetime.timedelta(seconds=900)
    assert watch.schedule.timezone == "Europe/Berlin"
    assert nightly.parameters.input == "s3://slides/a.zarr"
    assert nightly.parameters.model == "nuclei"  # a bundled name is not a path
    assert nightly.schedule.cron == "0 2 * * *"


def test_flow_parameters_carry_only_the_settings_given(tmp_path):
    nightly = load_pipelines(write(tmp_path, VALID)).deployments[1]
    assert nightly.parameters.flow_parameters() == {
        "input": "s3://slides/a.zarr",
        "output": "s3://masks/a.zarr",
        "parameters": {"scheduler": "tcp://dask-scheduler:8786", "precision": "bf16"},
    }


def test_labels_write_into_the_image_without_output(tmp_path):
    text = VALID.replace("      output: s3://masks/a.zarr\n", "      labels: nuclei\n")
    nightly = load_pipelines(write(tmp_path, text)).deployments[1]
    assert nightly.parameters.flow_parameters() == {
        "input": "s3://slides/a.zarr",
        "output": "s3://slides/a.zarr/labels/nuclei",
        "parameters": {
            "scheduler": "tcp://dask-scheduler:8786",
            "precision": "bf16",
            "labels": "nuclei",
        },
    }


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            ("tags: [watch-folder]", "tagz: [x]"),
            "deployments[0].tagz: unknown key (expected one of: name, flow",
        ),
        (
            ("tile_size: 508", "tile_sise: 508"),
            "deployments[0].parameters.tile_sise: unknown key (expected one of: model, tile_size",
        ),
        (
            ("interval: 900,", "every: 900,"),
            "deployments[0].schedule.every: unknown key (expected one of: cron, interval, timezone)",
        ),
        (
            ('cron: "0 2 * * *"', 'cron: "0 25 * * *"'),
            "deployments[1].schedule.cron: '0 25 * * *' is not a cron expression",
        ),
        (
            ("timezone: UTC", "timezone: Mars/Olympus"),
            "deployments[1].schedule.timezone: unknown time zone 'Mars/Olympus'",
        ),
        (
            ("interval: 900,", "interval: 900, cron: '* * * * *',"),
            "deployments[0].schedule: give exactly one of cron or interval",
        ),
        (
            ("interval: 900,", "interval: -5,"),
            "deployments[0].schedule.interval: interval must be positive",
        ),
        (
            ("flow: segment_image", "flow: segment_everything"),
            "deployments[1].flow: Input should be 'segment_image' or 'segment_folder'",
        ),
        (
            ("precision: bf16", "precision: fp8"),
            "deployments[1].parameters.precision: Input should be 'fp32', 'bf16', 'fp16' or 'auto'",
        ),
        (
            ("workers: 2", "workers: 0"),
            "deployments[0].parameters.workers: Input should be greater than or equal to 1 (got 0)",
        ),
        (
            ("scheduler: tcp://dask-scheduler:8786", "scheduler: dask-scheduler:8786"),
            "deployments[1].parameters.scheduler: scheduler 'dask-scheduler:8786' needs a protocol",
        ),
        (
            ("concurrency_limit: 1", "concurrency_limit: 0"),
            "deployments[0].concurrency_limit: Input should be greater than or equal to 1",
        ),
        (
            ("name: nightly", "name: watch"),
            "deployments: deployment names must be unique: watch repeated",
        ),
        (
            ("      input: incoming\n", ""),
            "deployments[0].parameters.input: required key is missing",
        ),
        (
            ("      output: s3://masks/a.zarr\n", ""),
            "deployments[1].parameters: give output, or labels to write the mask into the image",
        ),
        (
            ("precision: bf16", "labels: ../up"),
            "deployments[1].parameters.labels: label name '../up' cannot name a label image",
        ),
    ],
)
def test_bad_value_is_one_line_naming_file_key_and_expectation(tmp_path, change, expected):
    text = textwrap.dedent(VALID)
    assert change[0] in text
    path = write(tmp_path, text.replace(change[0], change[1], 1))
    with pytest.raises(ConfigError) as caught:
        load_pipelines(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert expected in message


@pytest.mark.parametrize(
    "text, expected",
    [
        ("deployments: [\n", "line 2 not valid YAML"),
        ("", "(top level): Input should be a valid dictionary"),
        ("deployments: []\n", "deployments: List should have at least 1 item"),
        ("deploy: []\n", "deploy: unknown key (expected one of: deployments)"),
    ],
)
def test_bad_file_is_a_config_error(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=None) as caught:
        load_pipelines(path)
    assert expected in str(caught.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_pipelines(tmp_path / "missing.yaml")


def test_config_error_is_also_a_value_error(tmp_path):
    with pytest.raises(ValueError):
        load_pipelines(write(tmp_path, "deploy: []\n"))


def test_runner_deployments_carry_schedule_tags_limit_and_parameters(tmp_path):
    from flows.serve import runner_deployment

    watch, nightly = load_pipelines(write(tmp_path, VALID)).deployments
    first, second = runner_deployment(watch), runner_deployment(nightly)
    assert (first.name, first.flow_name) == ("watch", "segment-folder")
    assert second.flow_name == "segment-image"
    assert first.tags == ["unet", "watch-folder"] and second.tags == ["unet"]
    assert first.version == second.version == unet.__version__
    assert first.concurrency_limit == 1
    assert first.parameters["parameters"] == {
        "model": watch.parameters.model,
        "tile_size": 508,
        "workers": 2,
    }
    assert first.entrypoint == "flows.segment.segment_folder"
    interval = first.schedules[0].schedule
    assert interval.interval == datetime.timedelta(seconds=900)
    assert interval.timezone == "Europe/Berlin"
    cron = second.schedules[0].schedule
    assert (cron.cron, cron.timezone) == ("0 2 * * *", "UTC")


@pytest.mark.parametrize("flow", ["segment_image", "segment_folder"])
def test_the_parameter_form_has_help_for_every_parameter_and_choices_for_devices(flow):
    from flows.pipelines import Deployment
    from flows.serve import runner_deployment

    deployment = Deployment.model_validate(
        {"name": "d", "flow": flow, "parameters": {"input": "in", "output": "out"}}
    )
    form = runner_deployment(deployment)._parameter_openapi_schema.model_dump_for_openapi()
    settings = form["definitions"]["SegmentParameters"]["properties"]
    for name, field in [*form["properties"].items(), *settings.items()]:
        assert field.get("description"), f"{name} has no help in the form"
    assert settings["device"]["enum"][:3] == ["auto", "cpu", "cuda"]
    assert settings["precision"]["enum"] == ["fp32", "bf16", "fp16", "auto"]
