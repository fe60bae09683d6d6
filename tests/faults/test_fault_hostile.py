"""Hostile and careless inputs, second round: each is refused before anything is written, or
segmented correctly, and never gives a wrong mask without a word.

Nothing here starts a Dask cluster unless it segments (the module's one in-process cluster).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from testdata import assert_same_mask, reference_mask, write_checkpoint, write_image

from unet.config import SegmentParameters
from unet.engine.lock import lock_location
from unet.engine.run import segment
from unet.errors import InvalidParameter


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("model") / "m.safetensors", depth=2)


@pytest.fixture(scope="module")
def client():
    from unet.engine.cluster import ClusterPlan, dask_client

    with dask_client(ClusterPlan(workers=1, torch_threads=1, gpus=0, processes=False)) as dask:
        yield dask


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` (links not followed) with its size and modification time."""
    return {
        str(path.relative_to(root)): (path.lstat().st_size, path.lstat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
        if path.is_file() or path.is_symlink()
    }


def test_output_through_a_symlink_into_the_input_is_refused(tmp_path, model):
    write_image(tmp_path / "in.zarr", (8, 8), (4, 4))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link_to_in").symlink_to(tmp_path / "in.zarr", target_is_directory=True)
    (tmp_path / "out" / "mask.zarr").symlink_to(tmp_path / "in.zarr", target_is_directory=True)
    before = tree(tmp_path)
    for output in (tmp_path / "out" / "link_to_in" / "mask.zarr", tmp_path / "out" / "mask.zarr"):
        for overwrite in (False, True):
            parameters = SegmentParameters(model=model, overwrite=overwrite)
            with pytest.raises(InvalidParameter, match="inside the input") as caught:
                segment(str(tmp_path / "in.zarr"), str(output), parameters)
            assert "\n" not in str(caught.value) and "symbolic link" in str(caught.value)
            assert not Path(lock_location(str(output))).exists()
    assert tree(tmp_path) == before, "nothing written, the input unchanged"


def test_preview_replaces_a_symlink_instead_of_writing_through_it(tmp_path):
    from unet.results.preview import write_bytes

    precious = tmp_path / "in.zarr" / "zarr.json"
    precious.parent.mkdir()
    precious.write_text("{}")
    preview = tmp_path / "mask.preview.png"
    preview.symlink_to(precious)
    write_bytes(str(preview), b"png")
    assert precious.read_text() == "{}" and not preview.is_symlink()
    assert preview.read_bytes() == b"png" and sorted(p.name for p in tmp_path.iterdir()) == [
        "in.zarr",
        "mask.preview.png",
    ]
