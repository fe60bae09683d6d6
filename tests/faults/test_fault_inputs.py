"""Bad inputs and outputs are refused before anything is written, each with one line saying why.

Every case here is refused before a Dask cluster would start, so no cluster is made. The CLI turns
any of these errors into ``error: <one line>`` on stderr and exit status 2 (``unet.cli.main``);
two CLI runs below check that end to end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from testdata import write_image

from unet.config import SegmentParameters
from unet.engine.lock import lock_location
from unet.engine.run import segment
from unet.errors import (
    ChannelMismatch,
    InputNotFound,
    InvalidImage,
    OutputExists,
    OutputLocked,
    OutputWriteError,
    UnsupportedInput,
)
from unet.io.folder import list_images

UNET = str(Path(sys.executable).with_name("unet"))


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time."""
    return {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def assert_refused(error_type, input, output, parameters, root: Path, match: str):
    before = tree(root)
    with pytest.raises(error_type, match=match) as caught:
        segment(str(input), str(output), parameters)  # no client: refused before any cluster
    assert "\n" not in str(caught.value)
    assert not Path(output).exists(), "a refused run writes nothing"
    assert not Path(lock_location(str(output))).exists()
    assert tree(root) == before, "a refused run changes nothing"


def _plain_file(path):
    path.write_text("not an image")


def _folder_without_metadata(path):
    path.mkdir()
    (path / "0").write_bytes(b"\x00" * 16)


def _group_without_multiscales(path):
    zarr.open_group(str(path), mode="w")


def _array(shape, dtype, **options):
    def make(path):
        zarr.create_array(str(path), shape=shape, chunks=(4,) * len(shape), dtype=dtype, **options)

    return make


@pytest.mark.parametrize(
    ("make", "error_type", "match"),
    [
        (None, InputNotFound, "does not exist"),
        (_plain_file, UnsupportedInput, "not a Zarr store"),
        (_folder_without_metadata, UnsupportedInput, "without Zarr metadata"),
        (_group_without_multiscales, UnsupportedInput, "multiscales"),
        (_array((0, 8), "uint8"), InvalidImage, "empty"),
        (_array((1, 8, 0), "uint8"), InvalidImage, "empty"),
        (_array((8, 8), bool), InvalidImage, "dtype bool"),
        (_array((8, 8), "complex64"), InvalidImage, "dtype complex64"),
        (_array((2, 1, 8, 8), "uint8"), InvalidImage, "4 axes"),
        (
            _array((3, 8, 8), "uint8", dimension_names=("z", "y", "x")),
            InvalidImage,
            "'z' axis of length 3",
        ),
        (_array((3, 8, 8), "uint8"), ChannelMismatch, "3 channels but model"),
    ],
    ids=[
        "missing",
        "plain-file",
        "folder-not-zarr",
        "group-not-image",
        "empty",
        "zero-length-axis",
        "bool",
        "complex",
        "extra-axes",
        "long-z-axis",
        "channels",
    ],
)
def test_bad_input_is_refused_in_one_line_and_writes_nothing(
    tmp_path, model, make, error_type, match
):
    input = tmp_path / "in.zarr"
    if make is not None:
        make(input)
    parameters = SegmentParameters(model=model, device="cpu")
    assert_refused(error_type, input, tmp_path / "out.zarr", parameters, tmp_path, match)


@pytest.mark.parametrize(
    ("below", "error_type", "match"),
    [
        (False, OutputExists, "not a mask written by unet segment"),
        (True, OutputWriteError, "writable"),
    ],
    ids=["output-is-a-file", "output-below-a-file"],
)
def test_output_on_a_file_is_refused_and_the_file_kept(tmp_path, model, below, error_type, match):
    write_image(tmp_path / "in.zarr", (8, 8), (4, 4))
    existing = tmp_path / "out.zarr"
    existing.write_text("precious")
    output = existing / "mask.zarr" if below else existing
    before = tree(tmp_path)
    with pytest.raises(error_type, match=match) as caught:
        segment(str(tmp_path / "in.zarr"), str(output), SegmentParameters(model=model))
    assert "\n" not in str(caught.value)
    assert tree(tmp_path) == before and existing.read_text() == "precious"


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` made read-only: by its mode, or (root ignores modes) immutable by chattr."""
    folder.chmod(0o555)
    immutable = False
    try:
        if os.access(folder, os.W_OK):
            if shutil.which("chattr") is None:
                pytest.skip("running as root without chattr: cannot make a folder read-only")
            result = subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
            if result.returncode != 0:
                pytest.skip(f"running as root and chattr +i fails: {result.stderr!r}")
            immutable = True
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def test_read_only_output_location_is_one_line_and_writes_nothing(tmp_path, model):
    write_image(tmp_path / "in.zarr", (8, 8), (4, 4))
    locked_folder = tmp_path / "read-only"
    locked_folder.mkdir()
    with read_only(locked_folder):
        with pytest.raises(OutputWriteError, match="writable") as caught:
            segment(
                str(tmp_path / "in.zarr"),
                str(locked_folder / "out.zarr"),
                SegmentParameters(model=model),
            )
        assert "\n" not in str(caught.value)
        assert list(locked_folder.iterdir()) == []


def write_lock(output: Path, pid: int, host: str | None = None) -> Path:
    import json

    location = Path(lock_location(str(output)))
    holder = {"pid": pid, "host": host or socket.gethostname(), "started": "then", "token": "x"}
    location.write_text(json.dumps(holder))
    return location


@pytest.mark.parametrize("holder", ["live", "other-host", "unreadable"])
def test_output_held_by_another_run_is_refused(tmp_path, model, holder):
    write_image(tmp_path / "in.zarr", (8, 8), (4, 4))
    output = tmp_path / "out.zarr"
    if holder == "live":
        lock = write_lock(output, os.getpid())
        expected = f"pid {os.getpid()}"
    elif holder == "other-host":
        lock = write_lock(output, 2**22 + 1, host="elsewhere")  # dead here, maybe alive there
        expected = "on elsewhere"
    else:
        lock = Path(lock_location(str(output)))
        lock.write_text("")  # a lock being written right now
        expected = "an unknown run"
    parameters = SegmentParameters(model=model, overwrite=True)  # --overwrite does not break in
    before = tree(tmp_path)
    with pytest.raises(OutputLocked, match=expected) as caught:
        segment(str(tmp_path / "in.zarr"), str(output), parameters)
    message = str(caught.value)
    assert "\n" not in message and f"delete {lock}" in message and "wait" in message
    assert tree(tmp_path) == before and not output.exists()


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([UNET, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize("case", ["bool-image", "locked-output"])
def test_cli_refuses_before_prefect_starts_in_one_line(tmp_path, model, case):
    input, output = tmp_path / "in.zarr", tmp_path / "out.zarr"
    if case == "bool-image":
        _array((8, 8), bool)(input)
        expected = "dtype bool"
    else:
        write_image(input, (8, 8), (4, 4))
        write_lock(output, os.getpid())  # this test process: alive
        expected = "is being written by another run"
    result = run_cli("segment", str(input), str(output), "--model", model, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert not output.exists()


def test_folder_symlink_leading_outside_is_refused(tmp_path):
    outside = tmp_path / "elsewhere"
    write_image(outside / "secret.zarr", (8, 8), (4, 4))
    folder = tmp_path / "incoming"
    write_image(folder / "a.zarr", (8, 8), (4, 4))
    (folder / "inside.zarr").symlink_to(folder / "a.zarr", target_is_directory=True)
    assert [item.name for item in list_images(folder)] == ["a", "inside"]

    (folder / "b.zarr").symlink_to(outside / "secret.zarr", target_is_directory=True)
    with pytest.raises(UnsupportedInput, match="links outside") as caught:
        list_images(folder)
    assert "\n" not in str(caught.value)


def test_nan_is_refused_by_predict_array_with_the_fix(small_model):
    from unet.predict.window import predict_array

    image = np.zeros((1, 8, 8), np.float32)
    image[0, 3, 3] = np.nan
    with pytest.raises(InvalidImage, match="nan_to_num.*label 0"):
        predict_array(small_model, image)
