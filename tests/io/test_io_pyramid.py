"""Pyramids: exact label levels, hand-checked means, metadata, replacement of old levels."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from ome_zarr_models.v05.image import Image
from ome_zarr_models.v05.image_label import ImageLabel

from unet.errors import InvalidParameter, UnsupportedInput
from unet.io.omezarr import create_image, create_label_image
from unet.io.pyramid import build_pyramid, reduce_block
from unet.io.source import open_image


def test_reduce_block_by_hand():
    block = np.array([[1, 2, 3], [4, 5, 6]], np.uint8)
    # Odd width: the last column is averaged alone, (3 + 6) / 2 = 4.5 rounds half to even.
    np.testing.assert_array_equal(reduce_block(block, "mean"), [[3, 4]])
    np.testing.assert_array_equal(reduce_block(block.astype(np.float32), "mean"), [[3.0, 4.5]])
    np.testing.assert_array_equal(reduce_block(block, "nearest"), [[1, 3]])
    assert reduce_block(block, "mean").dtype == np.uint8
    np.testing.assert_array_equal(reduce_block(np.array([[7]], np.int16), "mean"), [[7]])
    high = np.full((2, 2), 65535, np.uint16)
    np.testing.assert_array_equal(reduce_block(high, "mean"), high[:1, :1])


def test_label_pyramid_is_exact_subsampling(tmp_path):
    url = tmp_path / "mask.zarr"
    mask = np.random.default_rng(0).integers(0, 3, (37, 53)).astype(np.uint8)
    create_label_image(
        url,
        mask.shape,
        (8, 8),
        class_names=["bg", "a", "b"],
        colours=[(0, 0, 0), (255, 0, 0), (0, 255, 0)],
        pixel_size=(0.5, 0.5),
    )[...] = mask
    paths = build_pyramid(url, reduction="nearest", max_side=5)
    assert paths == ["0", "1", "2", "3", "4"]
    group = zarr.open_group(str(url), mode="r")
    for k, path in enumerate(paths):
        np.testing.assert_array_equal(group[path][...], mask[:: 2**k, :: 2**k])
        assert group[path].chunks == tuple(min(8, n) for n in group[path].shape)
    model = ImageLabel.from_zarr(group)
    datasets = model.ome_attributes.multiscales[0].datasets
    assert [d.coordinateTransformations[0].scale[0] for d in datasets] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert model.ome_attributes.image_label.colors[1].rgba == (255, 0, 0, 255)


def test_mean_pyramid_equals_whole_array_reduction(tmp_path):
    url = tmp_path / "img.zarr"
    image = np.random.default_rng(1).integers(0, 256, (2, 37, 53)).astype(np.uint8)
    create_image(url, image.shape, image.dtype, (8, 8))[...] = image
    paths = build_pyramid(url, max_side=13)
    assert paths == ["0", "1", "2", "3"]
    group = zarr.open_group(str(url), mode="r")
    expected = image
    for path in paths[1:]:
        expected = reduce_block(expected, "mean")
        np.testing.assert_array_equal(group[path][...], expected)
    Image.from_zarr(group)
    source = open_image(url)
    assert source.level_paths == ("0", "1", "2", "3")
    low, factor = source.low_resolution(max_side=14)
    assert factor == 4
    np.testing.assert_array_equal(low, group["2"][...].astype(np.float32))


def test_no_level_when_level0_fits_and_old_levels_are_replaced(tmp_path):
    url = tmp_path / "img.zarr"
    create_image(url, (1, 20, 9), np.float32, (8, 8))[...] = 1.5
    assert build_pyramid(url, max_side=4) == ["0", "1", "2", "3"]
    assert build_pyramid(url, max_side=20) == ["0"]
    group = zarr.open_group(str(url), mode="r")
    assert sorted(group.array_keys()) == ["0"]
    assert [d["path"] for d in group.attrs["ome"]["multiscales"][0]["datasets"]] == ["0"]
    Image.from_zarr(group)


def test_bad_arguments(tmp_path):
    url = tmp_path / "img.zarr"
    create_image(url, (1, 4, 4), np.uint8)
    with pytest.raises(InvalidParameter, match="'mean' or 'nearest'"):
        build_pyramid(url, reduction="max")
    with pytest.raises(InvalidParameter):
        build_pyramid(url, max_side=0)
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(UnsupportedInput):
        build_pyramid(tmp_path / "plain.zarr")
