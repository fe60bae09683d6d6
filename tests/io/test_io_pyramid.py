"""Pyramids: exact label levels, hand-checked means, metadata, replacement of old levels."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from ome_zarr_models.v05.image import Image
from ome_zarr_models.v05.image_label import ImageLabel

from unet.errors import InvalidParameter, UnsupportedInput
from unet.io.omezarr import create_image, create_label_image
from unet.io.pyramid import (
    build_pyramid,
    chunk_levels,
    create_chunk_levels,
    reduce_block,
    write_chunk_levels,
)
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


def test_levels_written_chunk_by_chunk_equal_the_built_pyramid(tmp_path, monkeypatch):
    """Levels written by each level-0 chunk (as segment's tasks do), then the rest built at the
    end, equal a pyramid built from the finished level 0; odd sides included."""
    monkeypatch.setattr("unet.io.pyramid.MIN_CHUNK_LEVEL_SIDE", 4)
    mask = np.random.default_rng(1).integers(0, 4, (75, 90)).astype(np.uint8)
    chunks = (16, 16)
    assert chunk_levels(mask.shape, chunks, max_side=10) == 2  # 16 >> 3 = 2 < 4 stops level 3
    assert chunk_levels((10, 9), chunks, max_side=10) == 0
    assert chunk_levels(mask.shape, (12, 16), max_side=10) == 1  # 12 >> 2 = 3 < 4
    assert chunk_levels(mask.shape, (20, 16), max_side=10) == 2  # 20 % 8 != 0 stops level 3
    colours = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)]
    names = ["bg", "a", "b", "c"]
    whole, by_chunk = tmp_path / "whole.zarr", tmp_path / "by-chunk.zarr"
    create_label_image(whole, mask.shape, chunks, class_names=names, colours=colours)[...] = mask
    level0 = create_label_image(by_chunk, mask.shape, chunks, class_names=names, colours=colours)
    arrays = create_chunk_levels(zarr.open_group(str(by_chunk), mode="r+"), 2)
    assert [a.chunks for a in arrays] == [(8, 8), (4, 4)]
    for y in range(0, 75, 16):
        for x in range(0, 90, 16):
            rows, cols = slice(y, min(y + 16, 75)), slice(x, min(x + 16, 90))
            level0[rows, cols] = mask[rows, cols]
            write_chunk_levels(arrays, mask[rows, cols], rows, cols)
    expected = build_pyramid(whole, reduction="nearest", max_side=10)
    assert build_pyramid(by_chunk, reduction="nearest", max_side=10, keep_levels=2) == expected
    built, kept = zarr.open_group(str(whole)), zarr.open_group(str(by_chunk))
    for path in expected:
        np.testing.assert_array_equal(kept[path][...], built[path][...])
    datasets = [
        m["datasets"] for m in (kept.attrs["ome"], built.attrs["ome"]) for m in m["multiscales"]
    ]
    assert datasets[0] == datasets[1] and len(datasets[0]) == len(expected)


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
