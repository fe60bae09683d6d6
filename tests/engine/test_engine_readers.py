"""Masks written by `unet segment` opened by the readers users have: ome-zarr-models, ome-zarr-py,
xarray and the layout napari's built-in reader depends on; labels inside the image."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr
from testdata import write_checkpoint

import unet
from unet.config import SegmentParameters
from unet.engine.destination import Destination, mask_location
from unet.engine.ledger import ATTRIBUTE, LEDGER_PATH
from unet.engine.run import segment
from unet.errors import InvalidParameter, OutputExists, UnsupportedInput
from unet.io.omezarr import create_image
from unet.io.pyramid import build_pyramid

#: A (1, 300, 170) image of 0.5 um pixels in 64 x 64 chunks, with a pyramid of 4 levels.
SHAPE, CHUNKS, PIXEL = (1, 300, 170), (64, 64), 0.5


def image_files(url: str) -> dict[str, str]:
    """Digest of every file of an image store, but its labels."""
    root = Path(url)
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.relative_to(root).parts[0] != "labels"
    }


@pytest.fixture(scope="module")
def masks(tmp_path_factory, client):
    """An OME-Zarr image segmented twice: into ``labels/nuclei`` and into a mask of its own."""
    tmp = tmp_path_factory.mktemp("readers")
    model = write_checkpoint(tmp / "m.safetensors", depth=2)
    image = str(tmp / "image.zarr")
    level0 = create_image(image, SHAPE, "uint8", CHUNKS, pixel_size=(PIXEL, PIXEL))
    level0[...] = np.random.default_rng(3).integers(0, 255, SHAPE, dtype=np.uint8)
    build_pyramid(image, max_side=64)
    before = image_files(image)
    parameters = SegmentParameters(model=model, tile_size=108, device="cpu", labels="nuclei")
    # As `unet segment IMAGE --labels nuclei` runs it, without Prefect: the preview included.
    report = unet.segment(image, client=client, **parameters.model_dump(exclude_defaults=True))
    inside = report.output
    standalone = str(tmp / "mask.zarr")
    segment(image, standalone, parameters.model_copy(update={"labels": None}), client=client)
    return {
        "image": image,
        "inside": inside,
        "standalone": standalone,
        "parameters": parameters,
        "report": report,
        "before": before,
        "model": model,
    }


def test_labels_inside_the_image_touch_nothing_else(masks):
    image = masks["image"]
    assert masks["inside"] == f"{image}/labels/nuclei"
    assert masks["report"].chunks_computed == masks["report"].chunks_total == 15
    assert image_files(image) == masks["before"], "the image's own files must stay as they were"
    assert Path(image).with_name("image.nuclei.preview.png").is_file(), "preview beside the image"
    labels = zarr.open_group(f"{image}/labels", mode="r")
    assert labels.attrs["ome"] == {"version": "0.5", "labels": ["nuclei"]}
    assert sorted(p.name for p in Path(image, "labels").iterdir()) == ["nuclei", "zarr.json"]
    mask = zarr.open_group(masks["inside"], mode="r")
    label = mask.attrs["ome"]["image-label"]
    assert label["source"] == {"image": "../../"}
    # NGFF: as many levels as the image, in the image's units and pixel size.
    datasets = mask.attrs["ome"]["multiscales"][0]["datasets"]
    image_datasets = zarr.open_group(image, mode="r").attrs["ome"]["multiscales"][0]["datasets"]
    assert len(datasets) == len(image_datasets) == 4
    scales = [d["coordinateTransformations"][0]["scale"] for d in datasets]
    assert scales == [[PIXEL * 2**k, PIXEL * 2**k] for k in range(4)]
    axes = mask.attrs["ome"]["multiscales"][0]["axes"]
    assert [a.get("unit") for a in axes] == ["micrometer", "micrometer"]
    level0 = mask["0"][...]
    for k in range(1, 4):
        assert np.array_equal(mask[str(k)][...], level0[:: 2**k, :: 2**k])
    standalone = zarr.open_group(masks["standalone"], mode="r")
    assert np.array_equal(standalone["0"][...], level0)
    assert 0 < (level0 == 1).mean() < 1


def test_a_finished_mask_lists_only_its_levels_with_dimension_names(masks):
    """What napari's built-in reader depends on: it opens every member of the group, sorted by
    name, as one pyramid level (a member that is not a level becomes one)."""
    for url in (masks["inside"], masks["standalone"]):
        group = zarr.open_group(url, mode="r")
        paths = [d["path"] for d in group.attrs["ome"]["multiscales"][0]["datasets"]]
        assert sorted(group) == sorted(paths), f"{url} lists {sorted(group)}"
        assert LEDGER_PATH not in group and group.attrs[ATTRIBUTE]["complete"] is True
        shapes = [group[key].shape for key in sorted(group)]
        assert shapes == sorted(shapes, reverse=True), "levels by decreasing size"
        for key in group:
            assert group[key].metadata.dimension_names == ("y", "x")


def test_napari_builtin_reader_opens_a_finished_mask_as_a_clean_pyramid(masks):
    with warnings.catch_warnings():  # napari's own deprecation warnings on import
        warnings.simplefilter("ignore")
        from napari_builtins.io import napari_get_reader

    for url in (masks["inside"], masks["standalone"]):
        group = zarr.open_group(url, mode="r")
        paths = [d["path"] for d in group.attrs["ome"]["multiscales"][0]["datasets"]]
        ((levels, *_),) = napari_get_reader(url)(url)
        assert [level.shape for level in levels] == [group[p].shape for p in paths]
        assert np.array_equal(np.asarray(levels[-1]), group[paths[-1]][...])


def test_ome_zarr_models_validate_the_image_with_its_labels(masks):
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel

    image = Image.from_zarr(zarr.open_group(masks["image"], mode="r"))
    assert image.labels is not None and image.labels.attributes.ome.labels == ["nuclei"]
    for url in (masks["inside"], masks["standalone"]):
        ImageLabel.from_zarr(zarr.open_group(url, mode="r"))


def test_ome_zarr_py_finds_the_labels_from_the_image_and_the_image_from_the_labels(masks):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    nodes = list(Reader(parse_url(masks["image"]))())
    labels = [n for n in nodes if any(isinstance(s, Label) for s in n.specs)]
    assert [str(n.zarr.path).rstrip("/").rsplit("/", 1)[-1] for n in labels] == ["nuclei"]
    assert labels[0].metadata["properties"][1]["class"] == "foreground"
    assert [d.shape for d in labels[0].data] == [(300, 170), (150, 85), (75, 43), (38, 22)]
    for url in (masks["inside"], masks["standalone"]):
        nodes = list(Reader(parse_url(url))())
        parents = [n for n in nodes if n.zarr.path.rstrip("/") == masks["image"]]
        assert parents, f"ome-zarr-py found no parent image of {url}"
        assert [d.shape for d in parents[0].data][0] == SHAPE


def test_xarray_opens_the_mask_and_each_level(masks):
    import xarray as xr

    standalone = xr.open_zarr(masks["standalone"], consolidated=False)
    assert standalone["0"].dims == ("y", "x") and standalone["0"].dtype == np.uint8
    expected = zarr.open_group(masks["standalone"], mode="r")["0"][...]
    assert np.array_equal(standalone["0"].values, expected)
    # A pyramid's levels share the names y and x at different sizes: open one level at a time.
    paths = ["0", "1", "2", "3"]
    for path in paths:
        others = [p for p in paths if p != path]
        level = xr.open_zarr(masks["inside"], consolidated=False, drop_variables=others)[path]
        assert level.shape == zarr.open_array(f"{masks['inside']}/{path}", mode="r").shape


def test_rerun_resumes_and_overwrite_rules_hold_inside_the_image(masks, client):
    parameters, image, inside = masks["parameters"], masks["image"], masks["inside"]
    again = segment(image, inside, parameters, client=client)
    assert again.chunks_resumed == again.chunks_total and again.chunks_computed == 0
    changed = parameters.model_copy(update={"tile_size": 116})
    from unet.errors import FingerprintMismatch

    with pytest.raises(FingerprintMismatch, match="--overwrite"):
        segment(image, inside, changed, client=client)
    foreign = mask_location(image, None, "other")
    zarr.open_group(foreign, mode="w")
    with pytest.raises(OutputExists):
        segment(image, foreign, parameters.model_copy(update={"labels": "other"}), client=client)
    listed = zarr.open_group(f"{image}/labels", mode="r").attrs["ome"]["labels"]
    assert listed == ["nuclei"], "an unfinished or refused label image is not listed"


def test_where_a_run_writes(tmp_path):
    image = str(tmp_path / "image.zarr")
    assert mask_location(image, "out.zarr", None) == "out.zarr"
    assert mask_location(image, None, "cells") == f"{image}/labels/cells"
    assert mask_location(image, f"{image}/labels/cells", "cells") == f"{image}/labels/cells"
    with pytest.raises(InvalidParameter, match="no OUTPUT"):
        mask_location(image, None, None)
    with pytest.raises(InvalidParameter, match="both OUTPUT"):
        mask_location(image, "out.zarr", "cells")
    with pytest.raises(InvalidParameter, match="label name"):
        mask_location(image, None, "../cells")
    (tmp_path / "slide.tif").write_bytes(b"")
    with pytest.raises(UnsupportedInput, match="ingest it first"):
        mask_location(str(tmp_path / "slide.tif"), None, "cells")
    assert Destination(image, str(tmp_path / "masks" / "m.zarr")).source_reference == (
        "../../image.zarr"
    )
    assert (
        Destination("s3://b/in/i.zarr", "s3://b/out/m.zarr").source_reference == "../../in/i.zarr"
    )
    assert Destination("s3://a/i.zarr", "gs://b/m.zarr").source_reference == "s3://a/i.zarr"


def test_labels_need_an_ome_zarr_image_group(tmp_path):
    model = write_checkpoint(tmp_path / "m.safetensors", depth=2)
    plain = zarr.create_array(str(tmp_path / "plain.zarr"), shape=(40, 40), dtype="uint8")
    plain[...] = 7
    parameters = SegmentParameters(model=model, tile_size=76, labels="nuclei")
    with pytest.raises(UnsupportedInput, match="not one"):
        segment(str(tmp_path / "plain.zarr"), f"{tmp_path}/plain.zarr/labels/nuclei", parameters)
    assert not (tmp_path / "plain.zarr" / "labels").exists()
    # Without --labels, an output inside the input is still refused.
    with pytest.raises(InvalidParameter, match="inside the input"):
        segment(
            str(tmp_path / "plain.zarr"),
            f"{tmp_path}/plain.zarr/labels/nuclei",
            parameters.model_copy(update={"labels": None}),
        )
