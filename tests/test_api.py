"""The public Python API: ``from unet import segment, load_checkpoint, predict_array``."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile
import zarr
from testdata import reference_mask, write_checkpoint, write_image

import unet
from unet.errors import InvalidParameter


def test_public_names_load_lazily():
    code = "import sys, unet; print([m for m in ('torch', 'dask', 'prefect') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert set(unet.__all__) <= set(dir(unet))
    assert {"segment", "load_checkpoint", "predict_array"} <= set(unet.__all__)
    with pytest.raises(AttributeError):
        unet.not_a_name  # noqa: B018


def test_segment_runs_the_engine_without_prefect_and_returns_the_report(tmp_path, client):
    model = write_checkpoint(tmp_path / "m.safetensors")
    raw = write_image(tmp_path / "in.zarr", (60, 70), (32, 32))
    report = unet.segment(
        str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), model=model, client=client
    )
    assert report.chunks_total == report.chunks_computed == 6
    expected, near_tie = reference_mask(model, raw[None], None)
    mask = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["0"][...]
    assert ((mask != expected) & ~near_tie).sum() == 0
    assert (tmp_path / "out.preview.png").is_file()


def test_segment_of_a_folder_ingests_files_and_returns_one_report_each(tmp_path, client):
    model = write_checkpoint(tmp_path / "m.safetensors")
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    tifffile.imwrite(folder / "a.tif", rng.integers(0, 255, (40, 50), dtype=np.uint8))
    write_image(folder / "b.zarr", (30, 30), (16, 16))
    reports = unet.segment(str(folder), str(tmp_path / "masks"), model=model, client=client)
    assert [r.output for r in reports] == [
        str(tmp_path / "masks" / "a.zarr"),
        str(tmp_path / "masks" / "b.zarr"),
    ]
    again = unet.segment(str(folder), str(tmp_path / "masks"), model=model, client=client)
    assert all(r.chunks_resumed == r.chunks_total for r in again)


def test_segment_refuses_a_bad_parameter_in_one_line(tmp_path):
    with pytest.raises(InvalidParameter, match="batch size"):
        unet.segment(str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), batch_size=0)
