"""The `unet` command as a user runs it: one-line errors, JSON reports, kill and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr
from testdata import UNET, kill_segment_when_marked, untracked, write_checkpoint, write_image


def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = untracked()
    return subprocess.run(
        [UNET, *args], capture_output=True, text=True, env=env, timeout=240, **kwargs
    )


def test_help_is_instant_and_lists_commands():
    started = time.perf_counter()
    result = run("--help")
    assert result.returncode == 0
    assert "segment" in result.stdout and "ingest" in result.stdout
    assert time.perf_counter() - started < 10


def test_import_unet_stays_light():
    code = (
        "import sys, unet.cli; print(any(m in sys.modules for m in ('torch', 'dask', 'prefect')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "args, message",
    [
        (["segment", "/nonexistent/in.zarr", "out.zarr"], "does not exist"),
        (
            ["segment", "{input}", "{tmp}/o.zarr", "--model", "{tmp}/missing.safetensors"],
            "not found",
        ),
        (
            ["segment", "{input}", "{tmp}/o.zarr", "--model", "{model}", "--tile-size", "500"],
            "492 or 508",
        ),
        (
            ["segment", "{input}", "{tmp}/o.zarr", "--model", "{model}", "--precision", "fp8"],
            "precision",
        ),
        (["segment", "{input}", "{input}/o.zarr", "--model", "{model}"], "inside the input"),
        (["segment", "{input}", "--model", "{model}"], "no OUTPUT given"),
    ],
)
def test_bad_input_gets_one_line_and_nonzero_exit(tmp_path, args, message):
    model = write_checkpoint(tmp_path / "m.safetensors")
    write_image(tmp_path / "in.zarr", (20, 20), (16, 16))
    values = {"input": str(tmp_path / "in.zarr"), "tmp": str(tmp_path), "model": model}
    result = run(*[a.format(**values) for a in args], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.timeout(400)
def test_segment_writes_report_and_kill_then_resume_is_identical(tmp_path):
    from testdata import write_checkpoint as checkpoint

    from unet.config import SegmentParameters
    from unet.engine.run import segment

    model = checkpoint(tmp_path / "m.safetensors", base_channels=8)
    write_image(tmp_path / "in.zarr", (160, 160), (32, 32))
    common = ["--model", model, "--tile-size", "204", "--device", "cpu"]
    segment(
        str(tmp_path / "in.zarr"),
        str(tmp_path / "ref.zarr"),
        SegmentParameters(model=model, tile_size=204, device="cpu"),
    )

    out = tmp_path / "out.zarr"
    # The driver and its Dask workers, killed mid-run.
    kill_segment_when_marked([str(tmp_path / "in.zarr"), str(out), *common], out, 4, 200)
    done = np.asarray(zarr.open_group(str(out), mode="r")["_unet_ledger"][...])
    assert 0 < done.sum() < 25, "the kill must land mid-run for this test to mean anything"

    resumed = run(
        "segment",
        str(tmp_path / "in.zarr"),
        str(out),
        *common,
        "--report",
        str(tmp_path / "resumed.json"),
    )
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr.count("not tracked") == 1  # said once
    # The terminal shows what a tracked run logs: the settings it resolved with the chunks to
    # compute and resume, a line per tenth of the chunks with Mpx/s and the time left, and the
    # result, then (once the run succeeded) the note that it was not tracked; the summary
    # (stdout) gives the size width first.
    start, *progress, result, note = resumed.stderr.strip().splitlines()
    assert "not tracked" in note
    left = 25 - int(done.sum())
    threads = f"{os.cpu_count()} torch thread" + ("s" if os.cpu_count() > 1 else "")
    assert start == (
        "in: 160 × 160 px (width × height); device cpu, precision fp32, tile 204, batch 4, "
        f"1 worker in this process ({threads}); 25 chunks: {left} to compute, "
        f"0 skipped (background), {int(done.sum())} resumed"
    )
    assert progress and all(
        line.startswith("in: ") and " of 25 chunks (" in line and "Mpx/s, about" in line
        for line in progress
    ), progress
    assert progress[-1].startswith("in: 25 of 25 chunks (100%)")
    assert result.startswith("in: done in ") and f"{left} chunk" in result
    assert "160 × 160 px (width × height)" in resumed.stdout
    report = json.loads((tmp_path / "resumed.json").read_text())
    assert report["size"] == "160 × 160 px (width × height)"
    assert report["chunks_total"] == 25
    assert report["chunks_resumed"] == int(done.sum())
    assert report["chunks_computed"] == 25 - int(done.sum())
    assert report["megapixels_per_second"] > 0
    a = zarr.open_group(str(tmp_path / "ref.zarr"), mode="r")["0"][...]
    b = zarr.open_group(str(out), mode="r")["0"][...]
    assert np.array_equal(a, b)


@pytest.mark.slow
def test_segment_labels_into_the_image(tmp_path):
    from unet.io.omezarr import create_image

    model = write_checkpoint(tmp_path / "m.safetensors")
    image = tmp_path / "slide.zarr"
    level0 = create_image(str(image), (1, 40, 50), "uint8", (32, 32))
    level0[...] = np.random.default_rng(0).integers(0, 255, (1, 40, 50), dtype=np.uint8)
    common = ["--model", model, "--tile-size", "204", "--device", "cpu"]
    result = run("segment", str(image), "--labels", "nuclei", *common)
    assert result.returncode == 0, result.stderr
    assert zarr.open_group(str(image / "labels"), mode="r").attrs["ome"]["labels"] == ["nuclei"]
    mask = zarr.open_group(str(image / "labels" / "nuclei"), mode="r")
    assert mask.attrs["unet"]["complete"] is True and sorted(mask) == ["0"]
    assert (tmp_path / "slide.nuclei.preview.png").is_file()
    assert sorted(p.name for p in image.iterdir()) == ["0", "labels", "zarr.json"]
    again = run("segment", str(image), "--labels", "nuclei", *common)
    assert again.returncode == 0 and "0 chunks computed" in again.stdout, again.stdout
    assert "4 resumed" in again.stdout


def test_ctrl_c_says_how_to_resume_and_exits_130(tmp_path, monkeypatch, capsys):
    import flows.runner
    from unet import cli

    write_image(tmp_path / "in.zarr", (40, 40), (32, 32))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # as Ctrl-C while the run goes on

    monkeypatch.setattr(flows.runner, "run_segment", interrupted)
    monkeypatch.setattr(
        sys, "argv", ["unet", "segment", str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr")]
    )
    with pytest.raises(SystemExit) as caught:
        cli.main()
    assert caught.value.code == 130
    assert "interrupted: rerun the same command to resume" in capsys.readouterr().err
