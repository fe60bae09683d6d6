"""Hostile and careless use, third round: ``--overwrite`` replaces only what unet wrote, copies
and results are never stale, and every refusal is one line with nothing written or lost.

Refusals run the real ``unet`` command in this process (no cluster starts before them); the few
cases that segment use the module's one in-process Dask cluster.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import zarr
from testdata import run_main, write_image

from unet.config import SegmentParameters


def tree(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every file and folder under ``root`` (links not followed): size and content of files."""
    found: dict[str, tuple[int, bytes | None]] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink() or not path.is_file():
            found[key] = (0, None)
        else:
            found[key] = (path.stat().st_size, path.read_bytes())
    return found


def write_png(path: Path, shape=(24, 24), seed=0) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)
    path.write_bytes(imagecodecs.png_encode(pixels))
    return pixels


@pytest.fixture
def folder(tmp_path) -> Path:
    """``D/`` with a Zarr image, a PNG, a text file, a folder of other files, a store of
    another tool and training data: what a careless output could destroy."""
    root = tmp_path / "D"
    root.mkdir()
    write_image(root / "in.zarr", (16, 16), (8, 8))
    write_png(root / "img.png")
    (root / "other.txt").write_text("precious")
    (root / "notes").mkdir()
    (root / "notes" / "a.txt").write_text("precious too")
    zarr.open_group(str(root / "foreign.zarr"), mode="w").attrs["tool"] = "someone else's"
    for part in ("images", "masks"):
        (root / "data" / part).mkdir(parents=True)
        write_png(root / "data" / part / "a.png", seed=1)
    (root / "images").mkdir()
    write_png(root / "images" / "a.png", seed=2)
    return root


def _png_named_like_a_preview(root: Path) -> None:
    (root / "img.png").rename(root / "img.preview.png")


def _image_where_the_instances_go(root: Path) -> None:
    (root / "in.zarr").rename(root / "m-instances.zarr")


def _folder_where_the_instances_go(root: Path) -> None:
    (root / "notes").rename(root / "m-instances.zarr")


def _text_named_geojson(root: Path) -> None:
    (root / "x.geojson").write_text("not json")


# Each case: what to prepare in D, the command's arguments (D is the folder above), and what
# its one line says.
OVERWRITE_CASES = {
    # Outputs that hold the input, or are it.
    "segment-output-holds-zarr-input": (None, "segment D/in.zarr D --overwrite", "holds the input"),
    "segment-output-holds-zarr-input-no-overwrite": (
        None,
        "segment D/in.zarr D",
        "holds the input",
    ),
    "segment-output-holds-png-input": (None, "segment D/img.png D --overwrite", "holds the input"),
    "segment-output-is-input": (None, "segment D/in.zarr D/in.zarr --overwrite", "is the input"),
    "ingest-output-holds-input": (None, "ingest D/img.png D --overwrite", "holds the input"),
    "ingest-output-is-input": (None, "ingest D/img.png D/img.png --overwrite", "is the input"),
    "export-output-is-mask": (None, "export D/in.zarr D/in.zarr --overwrite", "is the input"),
    "preview-is-input": (
        _png_named_like_a_preview,
        "segment D/img.preview.png D/img.zarr",
        "preview D/img.preview.png is the input",
    ),
    "instances-is-input": (
        _image_where_the_instances_go,
        "segment D/m-instances.zarr D/m.zarr --instances",
        "m-instances.zarr is the input",
    ),
    "report-is-input": (None, "segment D/img.png D/m.zarr --report D/img.png", "is the input"),
    "report-is-output": (None, "segment D/in.zarr D/m.zarr --report D/m.zarr", "is the output"),
    "train-out-in-images": (
        None,
        "train D/data --out D/data/images/m.safetensors --overwrite",
        "inside the input",
    ),
    # Outputs where something unet did not write is.
    "segment-over-text-file": (None, "segment D/in.zarr D/other.txt --overwrite", "not a mask"),
    "segment-over-folder": (None, "segment D/in.zarr D/notes --overwrite", "not a mask"),
    "segment-over-foreign-store": (
        None,
        "segment D/in.zarr D/foreign.zarr --overwrite",
        "not a mask",
    ),
    "segment-png-over-foreign-store": (
        None,
        "segment D/img.png D/foreign.zarr --overwrite",
        "not a mask",
    ),
    "segment-instances-over-folder": (
        _folder_where_the_instances_go,
        "segment D/in.zarr D/m.zarr --instances --overwrite",
        "not an instance image",
    ),
    "ingest-over-text-file": (None, "ingest D/img.png D/other.txt --overwrite", "not an image"),
    "ingest-over-foreign-store": (
        None,
        "ingest D/img.png D/foreign.zarr --overwrite",
        "not an image",
    ),
    "export-over-png": (None, "export D/in.zarr D/img.png --overwrite", "not a TIFF"),
    "export-over-folder": (None, "export D/in.zarr D/notes --overwrite", "not a TIFF"),
    "export-vector-over-text": (
        _text_named_geojson,
        "export D/in.zarr D/x.geojson --overwrite",
        "not a JSON file",
    ),
    "report-over-text": (
        None,
        "segment D/in.zarr D/m.zarr --report D/other.txt",
        "not a JSON file",
    ),
    "train-over-text": (None, "train D/data --out D/other.txt --overwrite", "not a safetensors"),
    "train-plot-over-png": (None, "train D/data --out D/img.safetensors", "plot D/img.png"),
    "demo-over-folders": (None, "demo --output D", "did not write"),
}


@pytest.mark.parametrize(
    ("prepare", "command", "match"), OVERWRITE_CASES.values(), ids=OVERWRITE_CASES
)
def test_overwrite_never_replaces_an_input_or_what_unet_did_not_write(
    folder, model, monkeypatch, capsys, prepare, command, match
):
    if prepare is not None:
        prepare(folder)
    monkeypatch.chdir(folder.parent)
    before = tree(folder)
    arguments = command.split()
    if arguments[0] == "segment":
        arguments += ["--model", model]
    elif arguments[0] == "train":
        arguments += ["--steps", "1", "--base-channels", "4", "--depth", "2"]
    code, lines = run_main(monkeypatch, capsys, *arguments)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: ") and match in lines[0], lines
    assert tree(folder) == before, "nothing written, nothing lost"


def test_a_folder_run_refuses_an_image_whose_mask_place_is_taken(
    tmp_path, model, monkeypatch, capsys
):
    (tmp_path / "images").mkdir()
    write_png(tmp_path / "images" / "a.png")
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "a.zarr").write_text("precious")
    before = tree(tmp_path)
    code, lines = run_main(
        monkeypatch, capsys, "segment", str(tmp_path / "images"), str(tmp_path / "masks"),
        "--model", model, "--overwrite",
    )  # fmt: skip
    assert code == 2 and len(lines) == 1 and "not a mask written by unet segment" in lines[0]
    assert tree(tmp_path) == before


def test_an_object_store_output_of_other_files_is_refused_not_deleted(tmp_path, model):
    import fsspec

    from unet.errors import OutputExists
    from unet.runs import segment

    write_image(tmp_path / "in.zarr", (16, 16), (8, 8))
    memory = fsspec.filesystem("memory")
    memory.pipe("/round3/out/notes.txt", b"precious")
    for overwrite in (False, True):
        with pytest.raises(OutputExists, match="not a mask written by unet segment"):
            segment(
                str(tmp_path / "in.zarr"), "memory://round3/out", model=model, overwrite=overwrite
            )
        assert memory.cat("/round3/out/notes.txt") == b"precious"
    memory.rm("/round3", recursive=True)


def test_overwrite_replaces_the_projects_own_outputs(tmp_path, model, client, monkeypatch, capsys):
    import tifffile

    from unet.io.ingest import ingest
    from unet.runs import segment

    write_png(tmp_path / "img.png")
    ingest(tmp_path / "img.png", tmp_path / "in.zarr", progress=False)
    ingest(tmp_path / "img.png", tmp_path / "in.zarr", overwrite=True, progress=False)
    (tmp_path / "m.zarr").mkdir()  # an empty folder: nothing to lose
    parameters = {"model": model, "device": "cpu", "overwrite": True, "instances": True}
    for _ in range(2):  # the second run replaces the first one's mask, instances and preview
        segment(str(tmp_path / "in.zarr"), str(tmp_path / "m.zarr"), client=client, **parameters)
    state = zarr.open_group(str(tmp_path / "m.zarr"), mode="r").attrs["unet"]
    assert state["complete"] and state["instances"]["objects"] >= 0
    tifffile.imwrite(tmp_path / "m.tif", np.zeros((2, 2), np.uint8))  # a TIFF: replaceable
    code, lines = run_main(
        monkeypatch, capsys, "export", str(tmp_path / "m.zarr"), str(tmp_path / "m.tif"),
        "--overwrite",
    )  # fmt: skip
    assert code == 0, lines
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "img.png", "in.zarr", "m-instances.zarr", "m-objects.parquet", "m.preview.png", "m.qml",
        "m.tif", "m.tif.aux.xml", "m.zarr",
    ]  # fmt: skip


def mask_of(output: Path) -> np.ndarray:
    return zarr.open_group(str(output), mode="r")["0"][...]


def expected_mask(model: str, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from testdata import reference_mask

    return reference_mask(model, pixels[None].astype(np.float32), 44)


def test_two_files_of_one_name_get_their_own_copies_and_masks(tmp_path, model, client):
    from testdata import assert_same_mask

    from unet.runs import segment

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    pixels_a = write_png(tmp_path / "a" / "img.png", seed=1)
    pixels_b = write_png(tmp_path / "b" / "img.png", seed=2)
    out = tmp_path / "out"
    for folder, name in (("a", "m1"), ("b", "m2")):
        segment(str(tmp_path / folder / "img.png"), str(out / f"{name}.zarr"), model=model,
                device="cpu", client=client)  # fmt: skip
    assert_same_mask(mask_of(out / "m1.zarr"), *expected_mask(model, pixels_a))
    assert_same_mask(mask_of(out / "m2.zarr"), *expected_mask(model, pixels_b))
    assert sorted(p.name for p in (out / "_ingested").iterdir()) == ["m1.zarr", "m2.zarr"]


def test_a_changed_image_file_is_ingested_again_and_its_old_mask_refused(
    tmp_path, model, client, monkeypatch, capsys
):
    import os

    from testdata import assert_same_mask

    from unet.runs import segment

    source, out = tmp_path / "img.png", tmp_path / "m.zarr"
    write_png(source, seed=1)
    segment(str(source), str(out), model=model, device="cpu", client=client)
    first = mask_of(out)
    changed = write_png(source, seed=2)
    status = source.stat()
    os.utime(source, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))  # surely newer
    before = tree(tmp_path)
    code, lines = run_main(monkeypatch, capsys, "segment", str(source), str(out), "--model", model)
    assert code == 2 and len(lines) == 1 and "out of date" in lines[0] and "--overwrite" in lines[0]
    assert tree(tmp_path) == before, "the mask and the copy it was made from are kept"
    segment(str(source), str(out), model=model, device="cpu", overwrite=True, client=client)
    assert_same_mask(mask_of(out), *expected_mask(model, changed))
    assert not np.array_equal(mask_of(out), first)


def test_an_ingested_copy_is_tied_to_its_file(tmp_path):
    import os

    from unet.io.ingest import ingest, is_current_copy

    write_png(tmp_path / "a.png", seed=1)
    write_png(tmp_path / "b.png", seed=1)  # the same pixels, another file
    ingest(tmp_path / "a.png", tmp_path / "a.zarr", progress=False)
    assert is_current_copy(str(tmp_path / "a.zarr"), tmp_path / "a.png")
    assert not is_current_copy(str(tmp_path / "a.zarr"), tmp_path / "b.png")
    assert not is_current_copy(str(tmp_path / "missing.zarr"), tmp_path / "a.png")
    os.utime(tmp_path / "a.png", ns=(0, 10**9))  # touched: its copy may be out of date
    assert not is_current_copy(str(tmp_path / "a.zarr"), tmp_path / "a.png")
    group = zarr.open_group(str(tmp_path / "a.zarr"), mode="r+")
    group.attrs["unet"] = {}  # a copy from before images recorded their file: redone
    assert not is_current_copy(str(tmp_path / "a.zarr"), tmp_path / "a.png")


def test_a_training_state_is_not_resumed_once_the_annotations_changed(tmp_path):
    """The state's fingerprint (what must match to resume) changes with an annotation corrected
    in place, same name and shape; a reload of unchanged data keeps it."""
    import tifffile

    from unet.training.config import TrainParameters
    from unet.training.data import load_dataset
    from unet.training.synthetic import write_nuclei_dataset
    from unet.training.train import _fingerprint

    data = write_nuclei_dataset(tmp_path / "data", count=2, size=32, seed=0)
    config = TrainParameters(base_channels=4, depth=2, tile_size=60)
    before = _fingerprint(config, load_dataset(data), None)
    assert _fingerprint(config, load_dataset(data), None) == before
    mask = sorted((Path(data) / "masks").iterdir())[0]
    corrected = tifffile.imread(mask)
    corrected[corrected == corrected.max()] = 0  # an object's annotation removed
    tifffile.imwrite(mask, corrected)
    after = _fingerprint(config, load_dataset(data), None)
    assert after["data"] != before["data"]
    assert {k: v for k, v in after.items() if k != "data"} == {
        k: v for k, v in before.items() if k != "data"
    }


def unfinish(mask: Path) -> None:
    """Make a finished mask look as a run killed midway leaves it: not complete, a chunk lost."""
    group = zarr.open_group(str(mask), mode="r+")
    group.attrs["unet"] = {**group.attrs["unet"], "complete": False}
    next(path for path in (mask / "0" / "c").rglob("*") if path.is_file()).unlink()


@pytest.fixture
def unfinished(tmp_path, model, client) -> tuple[Path, Path]:
    """An unfinished mask ``m.zarr`` of ``img.png`` (4 chunks) and the image's ground truth."""
    from unet.runs import segment

    write_png(tmp_path / "img.png", shape=(32, 32))
    write_png(tmp_path / "truth.png", shape=(32, 32), seed=5)
    write_image(tmp_path / "in.zarr", (32, 32), (16, 16))
    segment(str(tmp_path / "in.zarr"), str(tmp_path / "m.zarr"), model=model, device="cpu",
            client=client)  # fmt: skip
    unfinish(tmp_path / "m.zarr")
    return tmp_path / "m.zarr", tmp_path / "truth.png"


def test_evaluate_refuses_an_unfinished_mask(unfinished, monkeypatch, capsys):
    mask, truth = unfinished
    code, lines = run_main(monkeypatch, capsys, "evaluate", str(mask), str(truth))
    assert code == 2 and len(lines) == 1 and "unfinished unet segment run" in lines[0], lines
    code, lines = run_main(monkeypatch, capsys, "evaluate", str(truth), str(mask))
    assert code == 2 and "unfinished" in lines[0], "ground truth is a mask too"


def test_every_other_reader_refuses_an_unfinished_mask(unfinished, tmp_path):
    from unet.errors import InvalidImage
    from unet.results.export import export
    from unet.runs import write_preview
    from unet.training.data import load_dataset

    mask, _ = unfinished
    (tmp_path / "m.preview.png").unlink()  # the finished run's
    for level in ("", "/0"):  # the store, or its level-0 array
        with pytest.raises(InvalidImage, match="unfinished"):
            export(f"{mask}{level}", tmp_path / "m.tif")
    with pytest.raises(InvalidImage, match="unfinished"):
        write_preview(str(tmp_path / "in.zarr"), str(mask), SegmentParameters(model="nuclei"))
    assert not (tmp_path / "m.tif").exists() and not (tmp_path / "m.preview.png").exists()
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    write_png(data / "images" / "m.png", shape=(32, 32))
    mask.rename(data / "masks" / "m.zarr")
    with pytest.raises(InvalidImage, match="unfinished"):
        load_dataset(data)


def test_training_refuses_an_unfinished_label_image_inside_a_slide(tmp_path, model, client):
    from unet.errors import InvalidImage
    from unet.io.ingest import ingest
    from unet.runs import segment
    from unet.training.data import load_dataset

    write_png(tmp_path / "img.png", shape=(32, 32))
    ingest(tmp_path / "img.png", tmp_path / "slide.zarr", chunks=(16, 16), progress=False)
    segment(str(tmp_path / "slide.zarr"), labels="cells", model=model, device="cpu",
            client=client)  # fmt: skip
    assert load_dataset(tmp_path / "slide.zarr", label_name="cells")
    unfinish(tmp_path / "slide.zarr" / "labels" / "cells")
    with pytest.raises(InvalidImage, match="unfinished"):
        load_dataset(tmp_path / "slide.zarr", label_name="cells")


def test_an_instance_image_its_mask_does_not_record_is_refused(tmp_path, model, client):
    from unet.errors import InvalidImage
    from unet.io.files import read_labels
    from unet.runs import segment

    write_image(tmp_path / "in.zarr", (32, 32), (16, 16))
    segment(str(tmp_path / "in.zarr"), str(tmp_path / "m.zarr"), model=model, device="cpu",
            instances=True, client=client)  # fmt: skip
    assert read_labels(tmp_path / "m-instances.zarr").shape == (32, 32)
    group = zarr.open_group(str(tmp_path / "m.zarr"), mode="r+")
    group.attrs["unet"] = {k: v for k, v in group.attrs["unet"].items() if k != "instances"}
    with pytest.raises(InvalidImage, match="does not record as finished"):
        read_labels(tmp_path / "m-instances.zarr")


def write_ome04(path: Path, levels: list[np.ndarray], axes: list, **multiscale) -> None:
    """An NGFF 0.4 image on Zarr v2: one array per level, listed in the given order."""
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    datasets = []
    for index, level in enumerate(levels):
        group.create_array(str(index), shape=level.shape, dtype=level.dtype, chunks=(16, 16))
        group[str(index)][...] = level
        datasets.append({"path": str(index)})
    group.attrs["multiscales"] = [
        {"version": "0.4", "axes": axes, "datasets": datasets, **multiscale}
    ]


XY = [{"name": "x", "type": "space"}, {"name": "y", "type": "space"}]


def test_axes_stored_x_before_y_are_read_by_name(tmp_path, model, client, monkeypatch, capsys):
    from testdata import assert_same_mask

    from unet.io.files import read_labels
    from unet.io.source import open_image
    from unet.runs import segment

    pixels = np.random.default_rng(3).integers(0, 255, (24, 40), dtype=np.uint8)  # 24 high
    write_ome04(tmp_path / "xy.zarr", [np.ascontiguousarray(pixels.T)], XY)  # stored (x, y)
    source = open_image(tmp_path / "xy.zarr")
    assert source.shape == (1, 24, 40) and source.chunks == (16, 16)
    assert np.array_equal(source.read(slice(0, 24), slice(0, 40))[0], pixels)
    assert np.array_equal(read_labels(tmp_path / "xy.zarr"), pixels), "evaluate reads by name"
    segment(str(tmp_path / "xy.zarr"), str(tmp_path / "m.zarr"), model=model, device="cpu",
            client=client)  # fmt: skip
    mask = zarr.open_group(str(tmp_path / "m.zarr"), mode="r")["0"]
    assert mask.shape == (24, 40) and mask.metadata.dimension_names == ("y", "x")
    assert_same_mask(mask[...], *expected_mask(model, pixels))
    before = tree(tmp_path / "xy.zarr")
    code, lines = run_main(
        monkeypatch, capsys, "segment", str(tmp_path / "xy.zarr"), "--labels", "cells",
        "--model", model,
    )  # fmt: skip
    assert code == 2 and len(lines) == 1 and "x before y" in lines[0], lines
    assert tree(tmp_path / "xy.zarr") == before


@pytest.mark.parametrize("order", [[1, 0], [1, 2, 0]], ids=["smallest-first", "level-0-smaller"])
def test_the_largest_level_is_segmented_whatever_order_the_metadata_lists(
    tmp_path, model, client, order
):
    from unet.io.source import open_image
    from unet.runs import segment

    full = np.random.default_rng(4).integers(0, 255, (32, 32), dtype=np.uint8)
    pyramid = [full, full[::2, ::2], full[::4, ::4]][: len(order)]
    yx = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    write_ome04(tmp_path / "in.zarr", [pyramid[i] for i in order], yx)
    source = open_image(tmp_path / "in.zarr")
    assert source.shape == (1, 32, 32) and source.array_path == str(order.index(0))
    if len(order) == 3:  # the pyramid's smallest level, wherever it is listed
        low, factor = source.low_resolution(max_side=8)
        assert factor == 4 and np.array_equal(low[0], full[::4, ::4])
    report = segment(str(tmp_path / "in.zarr"), str(tmp_path / "m.zarr"), model=model,
                     device="cpu", client=client)  # fmt: skip
    assert report.shape == (1, 32, 32)
    assert zarr.open_group(str(tmp_path / "m.zarr"), mode="r")["0"].shape == (32, 32)


HOSTILE_OME = {
    "scale-strings": {"coordinateTransformations": [{"type": "scale", "scale": ["a", "b"]}]},
    "scale-zero": {"coordinateTransformations": [{"type": "scale", "scale": [0, 1]}]},
    "axes-without-name": {"axes": [{"type": "space"}, {"type": "space"}]},
    "axes-twice": {"axes": ["y", "y"]},
    "multiscales-dict": "dict",
    "dataset-path-number": "path",
}


@pytest.mark.parametrize("damage", HOSTILE_OME.values(), ids=HOSTILE_OME)
def test_hostile_ome_metadata_is_one_line(tmp_path, model, monkeypatch, capsys, damage):
    pixels = np.zeros((16, 16), np.uint8)
    write_ome04(tmp_path / "in.zarr", [pixels], ["y", "x"])
    group = zarr.open_group(str(tmp_path / "in.zarr"), mode="r+", zarr_format=2)
    multiscale = dict(group.attrs["multiscales"][0])
    if damage == "dict":
        group.attrs["multiscales"] = multiscale
    elif damage == "path":
        group.attrs["multiscales"] = [{**multiscale, "datasets": [{"path": 0}]}]
    else:
        group.attrs["multiscales"] = [{**multiscale, **damage}]
    before = tree(tmp_path)
    code, lines = run_main(monkeypatch, capsys, "segment", str(tmp_path / "in.zarr"),
                           str(tmp_path / "m.zarr"), "--model", model)  # fmt: skip
    assert code == 2 and len(lines) == 1 and "fix its" in lines[0], lines
    assert tree(tmp_path) == before


# --- Minor: hangs, exit 1 instead of one line, strict pipelines.yaml, strict JSON, drowning ---


@pytest.mark.timeout(60)
def test_a_fifo_is_refused_not_read(tmp_path, model, client, monkeypatch, capsys):
    import os

    from flows.pipelines import load_pipelines
    from unet.errors import ConfigError, UnsupportedInput
    from unet.io.files import read_labels
    from unet.runs import segment

    (tmp_path / "in").mkdir()
    write_png(tmp_path / "in" / "a.png")
    os.mkfifo(tmp_path / "in" / "x.png")  # nobody ever writes to it
    with pytest.raises(UnsupportedInput, match="x.png is a FIFO"):
        segment(str(tmp_path / "in"), str(tmp_path / "out"), model=model, device="cpu",
                client=client)  # fmt: skip
    assert zarr.open_group(str(tmp_path / "out" / "a.zarr"), mode="r").attrs["unet"]["complete"]
    code, lines = run_main(monkeypatch, capsys, "ingest", str(tmp_path / "in" / "x.png"),
                           str(tmp_path / "x.zarr"))  # fmt: skip
    assert code == 2 and len(lines) == 1 and "FIFO" in lines[0], lines
    code, lines = run_main(monkeypatch, capsys, "segment", str(tmp_path / "in" / "x.png"),
                           str(tmp_path / "x.zarr"), "--model", model)  # fmt: skip
    assert code == 2 and len(lines) == 1 and "FIFO" in lines[0], lines
    with pytest.raises(UnsupportedInput, match="FIFO"):
        read_labels(tmp_path / "in" / "x.png")  # unet evaluate, training data
    os.mkfifo(tmp_path / "pipelines.yaml")
    with pytest.raises(ConfigError, match="not a regular file"):
        load_pipelines(tmp_path / "pipelines.yaml")
    assert not (tmp_path / "x.zarr").exists()


def rewrite_header(source: str, target: Path, change) -> str:
    """A copy of the checkpoint ``source`` whose unet header ``change(header)`` edited."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(source, framework="pt") as handle:
        header = json.loads(handle.metadata()["unet"])
    change(header)
    save_file(load_file(source), str(target), metadata={"unet": json.dumps(header)})
    return str(target)


HOSTILE_HEADERS = {
    "colours-strings": (lambda h: h.update(colours=["red", "green"]), "colours"),
    "metadata-list": (lambda h: h.update(metadata=[1, 2]), "metadata must be an object"),
    "base-channels-100000": (
        lambda h: h["architecture"].update(base_channels=100000),
        "GiB in fp32. where the file holds",
    ),
    "depth-string": (lambda h: h["architecture"].update(depth="4"), "not an integer"),
    "architecture-list": (lambda h: h.update(architecture=[1]), "architecture must name"),
}


@pytest.mark.parametrize(("change", "match"), HOSTILE_HEADERS.values(), ids=HOSTILE_HEADERS)
def test_hostile_checkpoint_headers_are_one_line_before_anything_is_allocated(
    tmp_path, model, monkeypatch, capsys, change, match
):
    import tracemalloc

    from unet.errors import CheckpointError
    from unet.network.checkpoint import load_checkpoint

    bad = rewrite_header(model, tmp_path / "bad.safetensors", change)
    tracemalloc.start()
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(bad)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50 * 2**20, "refused before the network is built"
    write_image(tmp_path / "in.zarr", (16, 16), (8, 8))
    before = tree(tmp_path)
    code, lines = run_main(monkeypatch, capsys, "segment", str(tmp_path / "in.zarr"),
                           str(tmp_path / "m.zarr"), "--model", bad)  # fmt: skip
    assert code == 2 and len(lines) == 1 and re.search(match, lines[0]), lines
    assert tree(tmp_path) == before


@pytest.mark.parametrize(
    "options",
    [["--base-channels", "100000"], ["--depth", "12"], ["--depth", "17"]],
    ids=["base-channels-100000", "depth-12", "depth-17"],
)
def test_a_network_that_cannot_fit_is_refused_with_its_size(tmp_path, monkeypatch, capsys, options):
    import tracemalloc

    from unet.training.synthetic import write_nuclei_dataset

    data = write_nuclei_dataset(tmp_path / "data", count=2, size=32, seed=0)
    tracemalloc.start()
    code, lines = run_main(monkeypatch, capsys, "train", str(data), "--out",
                           str(tmp_path / "m.safetensors"), "--steps", "1", *options)  # fmt: skip
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert code == 2 and len(lines) == 1, lines
    assert ("GiB" in lines[0] and "free" in lines[0]) or "depth must be 0 to 16" in lines[0]
    assert peak < 200 * 2**20 and not (tmp_path / "m.safetensors").exists()


def test_evaluate_refuses_class_counts_it_cannot_hold_with_their_size(
    tmp_path, monkeypatch, capsys
):
    import tifffile

    labels = np.zeros((16, 16), np.int32)
    labels[0, 0] = 70000
    tifffile.imwrite(tmp_path / "a.tif", labels)
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((16, 16), np.int32))
    for extra in ([], ["--num-classes", "100000"]):
        files = [str(tmp_path / "b.tif")] * 2 if extra else [str(tmp_path / "a.tif")] * 2
        code, lines = run_main(monkeypatch, capsys, "evaluate", *files, *extra)
        assert code == 2 and len(lines) == 1 and "--instances" in lines[0], lines
    code, lines = run_main(monkeypatch, capsys, "evaluate", str(tmp_path / "a.tif"),
                           str(tmp_path / "b.tif"), "--instances")  # fmt: skip
    assert code == 0, lines


def test_device_cuda_without_cuda_is_refused_before_the_output_exists(
    tmp_path, model, monkeypatch, capsys
):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    write_image(tmp_path / "in.zarr", (16, 16), (8, 8))
    before = tree(tmp_path)
    code, lines = run_main(monkeypatch, capsys, "segment", str(tmp_path / "in.zarr"),
                           str(tmp_path / "m.zarr"), "--model", model, "--device", "cuda")  # fmt: skip
    assert code == 2 and len(lines) == 1 and "no CUDA GPU" in lines[0], lines
    assert tree(tmp_path) == before


PIPELINE = (
    "deployments:\n"
    "  - name: {name}\n"
    "    flow: segment_image\n"
    "    parameters: {{input: {input}, output: m.zarr{extra}}}\n"
    "{schedule}"
)
LAX_PIPELINES = {
    "cron-6-fields": ({"schedule": "    schedule: {cron: '0 0 2 * * *'}\n"}, "6 fields"),
    "batch-size-yes": ({"extra": ", batch_size: yes"}, "batch_size"),
    "tile-size-float": ({"extra": ", tile_size: 1.0e3"}, "tile_size"),
    "nodata-nan": ({"extra": ", nodata: .nan"}, "NaN pixels are always no data"),
    "duplicate-key": ({"extra": ", device: cpu, device: cuda"}, "given twice"),
    "input-empty": ({"input": '""'}, "input"),
    "name-with-newline": ({"name": '"a\\nb"'}, "name"),
}


@pytest.mark.parametrize(("change", "match"), LAX_PIPELINES.values(), ids=LAX_PIPELINES)
def test_pipelines_yaml_is_parsed_strictly(tmp_path, change, match):
    from flows.pipelines import load_pipelines
    from unet.errors import ConfigError

    fields = {"name": "a", "input": "a.zarr", "extra": "", "schedule": "", **change}
    config = tmp_path / "pipelines.yaml"
    config.write_text(PIPELINE.format(**fields))
    with pytest.raises(ConfigError, match=match) as caught:
        load_pipelines(config)
    assert "\n" not in str(caught.value)
    config.write_text(PIPELINE.format(name="a", input="a.zarr", extra="", schedule=""))
    assert load_pipelines(config).deployments[0].name == "a"


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_a_pipelines_yaml_not_in_utf8_is_one_line(tmp_path, encoding):
    from flows.pipelines import load_pipelines
    from unet.errors import ConfigError

    text = PIPELINE.format(name="Lüneburg", input="a.zarr", extra="", schedule="")
    (tmp_path / "pipelines.yaml").write_bytes(text.encode(encoding))
    with pytest.raises(ConfigError, match="save it as UTF-8"):
        load_pipelines(tmp_path / "pipelines.yaml")


def test_nodata_nan_writes_strict_json(tmp_path, model, client):
    from unet.runs import segment

    def refuse(constant: str) -> None:
        raise ValueError(f"bare {constant} in JSON")

    pixels = np.random.default_rng(0).integers(0, 255, (16, 16)).astype(np.float32)
    pixels[:4, :4] = np.nan
    zarr.create_array(str(tmp_path / "in.zarr"), data=pixels, chunks=(8, 8))
    segment(str(tmp_path / "in.zarr"), str(tmp_path / "m.zarr"), model=model, device="cpu",
            nodata=float("nan"), client=client)  # fmt: skip
    for metadata in (tmp_path / "m.zarr").rglob("zarr.json"):
        json.loads(metadata.read_text(), parse_constant=refuse)
    assert zarr.open_group(str(tmp_path / "m.zarr"), mode="r")["0"][0, 0] == 255  # no data


def test_a_folder_of_many_bad_files_is_summarized_and_listed(tmp_path, model, monkeypatch, capsys):
    (tmp_path / "in").mkdir()
    for index in range(40):
        (tmp_path / "in" / f"empty-{index:02d}.png").write_bytes(b"")
    code, lines = run_main(monkeypatch, capsys, "segment", str(tmp_path / "in"),
                           str(tmp_path / "out"), "--model", model, note=True)  # fmt: skip
    assert code == 2 and len(lines) <= 5, lines
    assert lines[-1].startswith("error: 40 of 40 images failed: empty-00.png")
    assert "and 37 more" in lines[-1] and len(lines[-1]) < 2000
    listed = json.loads((tmp_path / "out" / "_failures.json").read_text())
    assert [Path(row["image"]).name for row in listed] == [f"empty-{i:02d}.png" for i in range(40)]
    for index in range(40):  # repaired: the next run lists nothing, and removes the old list
        write_png(tmp_path / "in" / f"empty-{index:02d}.png", shape=(4, 4))
    from unet.runs import collect_reports, folder_jobs

    jobs = folder_jobs(str(tmp_path / "in"), str(tmp_path / "out"))
    collect_reports(jobs, [None] * len(jobs))  # type: ignore[list-item]
    assert not (tmp_path / "out" / "_failures.json").exists()


def test_an_error_after_planning_is_one_line(tmp_path, model, monkeypatch, capsys):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    code, lines = run_main(monkeypatch, capsys, "segment", str(tmp_path / "bad.png"),
                           str(tmp_path / "m.zarr"), "--model", model, note=True)  # fmt: skip
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
