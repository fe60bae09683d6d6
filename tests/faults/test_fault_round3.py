"""Hostile and careless use, third round: ``--overwrite`` replaces only what unet wrote, copies
and results are never stale, and every refusal is one line with nothing written or lost.

Refusals run the real ``unet`` command in this process (no cluster starts before them); the few
cases that segment use the module's one in-process Dask cluster.
"""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import zarr
from testdata import write_checkpoint, write_image

from unet.config import SegmentParameters


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("model") / "m.safetensors", depth=2)


@pytest.fixture(scope="module")
def client():
    from unet.engine.cluster import ClusterPlan, dask_client

    with dask_client(ClusterPlan(workers=1, torch_threads=1, gpus=0, processes=False)) as dask:
        yield dask


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


def run_main(monkeypatch, capsys, *arguments: str) -> tuple[int, list[str]]:
    """``unet ARGUMENTS`` in this process: (exit status, the lines on stderr but the untracked
    run's note)."""
    import sys

    from unet.cli import main

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(sys, "argv", ["unet", *arguments])
    try:
        main()
        code = 0
    except SystemExit as exit:
        code = exit.code
    lines = [
        line
        for line in capsys.readouterr().err.splitlines()
        if line.strip() and not line.startswith("note: no Prefect server")
    ]
    return code, lines


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
    code, lines = run_main(
        monkeypatch, capsys, "export", str(tmp_path / "m.zarr"), str(tmp_path / "m.tif")
    )
    assert code == 0, lines
    code, lines = run_main(
        monkeypatch, capsys, "export", str(tmp_path / "m.zarr"), str(tmp_path / "m.tif"),
        "--overwrite",
    )  # fmt: skip
    assert code == 0, lines
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "img.png", "in.zarr", "m-instances.zarr", "m-objects.parquet", "m.preview.png", "m.tif",
        "m.zarr",
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
