"""Names of runs, task runs and artifact keys; where a configured Prefect server is found."""

from __future__ import annotations

import pytest

from flows.names import (
    artifact_key,
    display_name,
    flow_run_name,
    output_key,
    summarized,
    task_run_name,
)
from flows.settings import configured_api_url


def test_flow_runs_are_named_after_input_and_output():
    assert flow_run_name("/data/images", "/data/masks") == "images → masks"
    assert flow_run_name("in/cells-a.png", "out/masks/") == "cells-a → masks"
    assert flow_run_name("s3://b/slide-001.zarr", "s3://m/slide-001.zarr") == (
        "slide-001 → m/slide-001"
    )
    assert flow_run_name("cells-a.png", "cells-a.zarr") == "cells-a → cells-a"
    assert display_name("a/B.OME.TIFF") == "B.OME"
    assert task_run_name("segment", "masks/cells a.zarr") == "segment cells a"


def test_artifact_keys_are_readable_and_unique_per_output(tmp_path):
    first = output_key(str(tmp_path / "out1" / "cells-c.zarr"), "preview")
    second = output_key(str(tmp_path / "out2" / "cells-c.zarr"), "preview")
    assert first.startswith("out1-cells-c-") and first.endswith("-preview")
    assert second.startswith("out2-cells-c-") and first != second
    # The same output, however written, keeps its key: reruns are versions of one artifact.
    assert output_key(str(tmp_path / "out1" / "cells-c.zarr") + "/", "preview") == first
    elsewhere = output_key(str(tmp_path / "x" / "out1" / "cells-c.zarr"), "preview")
    assert elsewhere != first and elsewhere.startswith("out1-cells-c-")
    assert output_key("s3://bucket/Slide 01.zarr", "summary").startswith("bucket-slide-01-")
    for key in (first, second, output_key("masks é/ü.zarr", "progress")):
        assert set(key) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    assert artifact_key("__") == "image"


def test_failures_are_summarized_on_one_line():
    short = ValueError("the image has 3 channels")
    assert summarized(short) == "ValueError: the image has 3 channels"
    long = RuntimeError("word " * 100 + "\nsecond line")
    text = summarized(long, characters=40)
    assert text == "RuntimeError: word word word word word …"
    assert "\n" not in summarized(long)
    paths = OSError(
        "/data/in/c.zarr has 3 channels but model '/models/m.safetensors' takes 1; "
        "s3://b/x.zarr/: unreadable, see ~/logs/run.txt. Use bf16/fp16"
    )
    assert summarized(paths, characters=500) == (
        "OSError: c.zarr has 3 channels but model 'm.safetensors' takes 1; "
        "x.zarr: unreadable, see run.txt. Use bf16/fp16"
    )


@pytest.fixture
def prefect_environment(monkeypatch, tmp_path):
    for name in ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    return tmp_path


def test_the_server_is_found_in_the_environment_or_the_active_profile(
    prefect_environment, monkeypatch
):
    assert configured_api_url() is None  # no profiles.toml
    (prefect_environment / "profiles.toml").write_text(
        'active = "local"\n'
        '[profiles.local]\nPREFECT_API_URL = "http://127.0.0.1:4200/api"\n'
        '[profiles.other]\nPREFECT_API_URL = "http://other:4200/api"\n'
        "[profiles.ephemeral]\nPREFECT_SERVER_EPHEMERAL_ENABLED = true\n"
    )
    assert configured_api_url() == "http://127.0.0.1:4200/api"
    monkeypatch.setenv("PREFECT_PROFILE", "other")
    assert configured_api_url() == "http://other:4200/api"
    monkeypatch.setenv("PREFECT_PROFILE", "ephemeral")
    assert configured_api_url() is None
    monkeypatch.setenv("PREFECT_API_URL", "http://env:4200/api")
    assert configured_api_url() == "http://env:4200/api"
    monkeypatch.setenv("PREFECT_API_URL", "")  # set empty: unset, whatever the profile says
    monkeypatch.delenv("PREFECT_PROFILE")
    assert configured_api_url() is None


def test_an_unreadable_profiles_file_means_no_server(prefect_environment):
    (prefect_environment / "profiles.toml").write_text("active = [\n")
    assert configured_api_url() is None
