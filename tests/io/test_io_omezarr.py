"""OME-Zarr 0.5 writers, validated with ome-zarr-models."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from ome_zarr_models.v05.image import Image
from ome_zarr_models.v05.image_label import ImageLabel

from unet.errors import InvalidParameter, OutputExists
from unet.io.omezarr import (
    create_image,
    create_label_image,
    image_calibration,
    set_label_listed,
    set_multiscales,
)


def test_create_image_writes_valid_ome_05(tmp_path):
    level0 = create_image(
        tmp_path / "img.zarr",
        (3, 20, 30),
        "uint16",
        (8, 64),
        channel_names=["red", "green", "blue"],
        pixel_size=(0.5, 0.25),
        name="slide",
    )
    assert level0.shape == (3, 20, 30) and level0.dtype == np.uint16
    assert level0.chunks == (1, 8, 30)  # x chunk clipped to the image
    assert level0.metadata.dimension_names == ("c", "y", "x")
    assert level0.fill_value == 0 and not level0[...].any()
    (codec,) = level0.compressors
    assert (codec.cname.value, type(codec).__name__) == ("zstd", "BloscCodec")

    group = zarr.open_group(str(tmp_path / "img.zarr"), mode="r")
    model = Image.from_zarr(group)
    (multiscale,) = model.ome_attributes.multiscales
    assert multiscale.name == "slide"
    assert [axis.name for axis in multiscale.axes] == ["c", "y", "x"]
    assert [axis.unit for axis in multiscale.axes] == [None, "micrometer", "micrometer"]
    (dataset,) = multiscale.datasets
    assert dataset.path == "0"
    assert list(dataset.coordinateTransformations[0].scale) == [1.0, 0.5, 0.25]
    channels = group.attrs["ome"]["omero"]["channels"]
    assert [c["label"] for c in channels] == ["red", "green", "blue"]


def test_create_image_yx(tmp_path):
    level0 = create_image(tmp_path / "img.zarr", (5, 7), np.float32, axes=("y", "x"))
    assert level0.chunks == (5, 7)
    model = Image.from_zarr(zarr.open_group(str(tmp_path / "img.zarr"), mode="r"))
    assert list(
        model.ome_attributes.multiscales[0].datasets[0].coordinateTransformations[0].scale
    ) == [1.0, 1.0]


def test_create_image_refuses_an_existing_output(tmp_path):
    create_image(tmp_path / "img.zarr", (1, 4, 4), np.uint8)
    with pytest.raises(OutputExists, match="--overwrite"):
        create_image(tmp_path / "img.zarr", (1, 4, 4), np.uint8)
    level0 = create_image(tmp_path / "img.zarr", (2, 6, 6), np.uint8, overwrite=True)
    assert level0.shape == (2, 6, 6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shape": (4, 4)},
        {"shape": (1, 0, 4)},
        {"dtype": bool},
        {"chunks": (0, 4)},
        {"axes": ("y", "x", "c")},
        {"channel_names": ["a", "b"]},
        {"pixel_size": (0.0, 1.0)},
    ],
)
def test_create_image_rejects_bad_parameters(tmp_path, kwargs):
    arguments = {"shape": (1, 4, 4), "dtype": np.uint8, "chunks": (4, 4)} | kwargs
    shape, dtype, chunks = arguments.pop("shape"), arguments.pop("dtype"), arguments.pop("chunks")
    with pytest.raises(InvalidParameter):
        create_image(tmp_path / "img.zarr", shape, dtype, chunks, **arguments)
    assert not (tmp_path / "img.zarr").exists()


def test_create_label_image(tmp_path):
    level0 = create_label_image(
        tmp_path / "mask.zarr",
        (12, 9),
        (4, 4),
        class_names=["background", "nucleus"],
        colours=[(0, 0, 0), (230, 25, 75)],
        pixel_size=(0.5, 0.5),
    )
    assert level0.dtype == np.uint8 and level0.shape == (12, 9) and level0.chunks == (4, 4)
    model = ImageLabel.from_zarr(zarr.open_group(str(tmp_path / "mask.zarr"), mode="r"))
    label = model.ome_attributes.image_label
    assert [(c.label_value, c.rgba) for c in label.colors] == [
        (0, (0, 0, 0, 0)),
        (1, (230, 25, 75, 255)),
    ]
    assert [(p.label_value, p.model_extra["class"]) for p in label.properties] == [
        (0, "background"),
        (1, "nucleus"),
    ]


def test_create_label_image_needs_one_colour_per_class(tmp_path):
    with pytest.raises(InvalidParameter, match="one colour per class"):
        create_label_image(
            tmp_path / "m.zarr", (4, 4), (4, 4), class_names=["a", "b"], colours=[(0, 0, 0)]
        )
    with pytest.raises(InvalidParameter, match="RGB"):
        create_label_image(
            tmp_path / "m.zarr", (4, 4), (4, 4), class_names=["a"], colours=[(0, 0, 300)]
        )


def test_set_multiscales_scales_image_axes_only(tmp_path):
    create_image(tmp_path / "img.zarr", (2, 8, 8), np.uint8, (4, 4), pixel_size=(0.5, 0.25))
    group = zarr.open_group(str(tmp_path / "img.zarr"), mode="r+")
    for path, shape in (("1", (2, 4, 4)), ("2", (2, 2, 2))):
        group.create_array(
            path, shape=shape, dtype=np.uint8, chunks=(1, 4, 4), dimension_names=("c", "y", "x")
        )
    set_multiscales(group, ["0", "1", "2"], [1, 2, 4], method="mean")
    model = Image.from_zarr(zarr.open_group(str(tmp_path / "img.zarr"), mode="r"))
    (multiscale,) = model.ome_attributes.multiscales
    assert [list(d.coordinateTransformations[0].scale) for d in multiscale.datasets] == [
        [1.0, 0.5, 0.25],
        [1.0, 1.0, 0.5],
        [1.0, 2.0, 1.0],
    ]
    assert multiscale.type == "mean"
    with pytest.raises(InvalidParameter):
        set_multiscales(group, ["0", "1"], [1, 1])


def test_labels_group_lists_complete_label_images_only(tmp_path):
    image = str(tmp_path / "image.zarr")
    create_image(image, (1, 8, 8), np.uint8, (8, 8), pixel_size=(0.25, 0.25), unit="nanometer")
    set_label_listed(image, "cells", listed=False)  # a run starts: the group, no name yet
    labels = zarr.open_group(f"{image}/labels", mode="r")
    assert labels.attrs["ome"] == {"version": "0.5", "labels": []}
    set_label_listed(image, "cells", listed=True)
    set_label_listed(image, "nuclei", listed=True)
    set_label_listed(image, "cells", listed=True)
    assert zarr.open_group(f"{image}/labels", mode="r").attrs["ome"]["labels"] == [
        "nuclei",
        "cells",
    ]
    set_label_listed(image, "nuclei", listed=False)  # replaced by --overwrite: unlisted
    assert zarr.open_group(f"{image}/labels", mode="r").attrs["ome"]["labels"] == ["cells"]
    assert image_calibration(image) == ((0.25, 0.25), "nanometer")
    create_label_image(
        f"{image}/labels/cells",
        (8, 8),
        (8, 8),
        class_names=["background", "cell"],
        colours=[(0, 0, 0), (255, 0, 0)],
        pixel_size=(0.25, 0.25),
        unit="nanometer",
        source="../../",
    )
    Image.from_zarr(zarr.open_group(image, mode="r"))
    label = ImageLabel.from_zarr(zarr.open_group(f"{image}/labels/cells", mode="r"))
    assert label.attributes.ome.image_label.source.image == "../../"
    assert image_calibration(f"{image}/labels/cells/0") == (None, None), "an array: no scale"
