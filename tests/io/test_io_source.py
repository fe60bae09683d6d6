"""open_image and ImageSource: axis handling, exact reads, errors, pickling, identity."""

from __future__ import annotations

import json
import pickle
import time
import uuid

import numpy as np
import pytest
import zarr

from unet.errors import InputNotFound, InvalidImage, InvalidParameter, UnsupportedInput
from unet.io.omezarr import create_image
from unet.io.source import ImageSource, open_image


def _data(shape, dtype=np.uint16):
    return (np.arange(np.prod(shape)) % 997).astype(dtype).reshape(shape)


def _array(path, data, chunks, zarr_format=3, **kwargs):
    array = zarr.create_array(
        store=str(path),
        shape=data.shape,
        dtype=data.dtype,
        chunks=chunks,
        zarr_format=zarr_format,
        **kwargs,
    )
    array[...] = data
    return array


def _ome04(path, data, scale, levels=()):
    """A hand-written NGFF 0.4 image on Zarr v2 with axes t, c, z, y, x."""
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    datasets = []
    for index, (level, factor) in enumerate([(data, 1), *levels]):
        group.create_array(str(index), shape=level.shape, dtype=level.dtype, chunks=(1, 1, 1, 8, 8))
        group[str(index)][...] = level
        level_scale = scale[:3] + [s * factor for s in scale[3:]]
        datasets.append(
            {
                "path": str(index),
                "coordinateTransformations": [{"type": "scale", "scale": level_scale}],
            }
        )
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [
                {"name": "t", "type": "time"},
                {"name": "c", "type": "channel"},
                {"name": "z", "type": "space", "unit": "micrometer"},
                {"name": "y", "type": "space", "unit": "micrometer"},
                {"name": "x", "type": "space", "unit": "micrometer"},
            ],
            "datasets": datasets,
        }
    ]
    return group


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_yx_array_reads_exact_regions(tmp_path, zarr_format):
    data = _data((37, 53))
    _array(tmp_path / "a.zarr", data, (8, 16), zarr_format=zarr_format)
    source = open_image(tmp_path / "a.zarr")
    assert source.shape == (1, 37, 53)
    assert source.chunks == (8, 16)
    assert source.dtype == "uint16"
    assert source.axes == ("y", "x")
    assert source.array_path == ""
    assert source.url == str(tmp_path / "a.zarr")
    assert source.pixel_size is None
    region = source.read(slice(5, 30), slice(0, 53))
    assert region.dtype == np.uint16
    np.testing.assert_array_equal(region, data[None, 5:30, :])
    np.testing.assert_array_equal(source.read(slice(36, 37), slice(52, 53)), data[None, 36:, 52:])


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_cyx_array(tmp_path, zarr_format):
    data = _data((3, 20, 30), np.float32)
    _array(tmp_path / "a.zarr", data, (1, 8, 8), zarr_format=zarr_format)
    source = open_image(str(tmp_path / "a.zarr"))
    assert (source.shape, source.axes, source.channels_last) == (
        (3, 20, 30),
        ("c", "y", "x"),
        False,
    )
    np.testing.assert_array_equal(source.read(slice(3, 11), slice(7, 29)), data[:, 3:11, 7:29])


def test_channels_last_array_is_read_channel_first(tmp_path):
    data = _data((20, 30, 3), np.uint8)
    _array(tmp_path / "a.zarr", data, (8, 8, 3))
    source = open_image(tmp_path / "a.zarr", channels_last=True)
    assert (source.shape, source.axes, source.channels_last) == ((3, 20, 30), ("y", "x", "c"), True)
    region = source.read(slice(2, 9), slice(10, 30))
    assert region.flags.c_contiguous
    np.testing.assert_array_equal(region, np.moveaxis(data, -1, 0)[:, 2:9, 10:30])


def test_yxc_without_channels_last_suggests_the_flag(tmp_path):
    _array(tmp_path / "a.zarr", _data((20, 30, 3), np.uint8), (8, 8, 3))
    with pytest.raises(InvalidImage, match="--channels-last"):
        open_image(tmp_path / "a.zarr")


def test_ome_04_group_drops_singleton_t_and_z(tmp_path):
    data = _data((1, 2, 1, 20, 30))
    _ome04(tmp_path / "img.zarr", data, [1.0, 1.0, 2.0, 0.5, 0.25])
    source = open_image(tmp_path / "img.zarr")
    assert source.shape == (2, 20, 30)
    assert source.axes == ("t", "c", "z", "y", "x")
    assert source.array_path == "0"
    assert source.pixel_size == (0.5, 0.25)
    np.testing.assert_array_equal(source.read(slice(4, 17), slice(9, 30)), data[0, :, 0, 4:17, 9:])


def test_ome_04_group_with_long_z_axis_is_refused(tmp_path):
    _ome04(tmp_path / "img.zarr", _data((1, 1, 4, 20, 30)), [1.0] * 5)
    with pytest.raises(InvalidImage, match="'z' axis of length 4"):
        open_image(tmp_path / "img.zarr")


def test_ome_05_group_from_create_image(tmp_path):
    data = _data((2, 20, 30))
    level0 = create_image(
        tmp_path / "img.zarr", data.shape, data.dtype, (8, 8), pixel_size=(0.5, 0.5)
    )
    level0[...] = data
    source = open_image(tmp_path / "img.zarr")
    assert (source.shape, source.axes, source.array_path) == ((2, 20, 30), ("c", "y", "x"), "0")
    assert (source.chunks, source.pixel_size, source.level_paths) == ((8, 8), (0.5, 0.5), ("0",))
    np.testing.assert_array_equal(source.read(slice(0, 20), slice(3, 4)), data[:, :, 3:4])
    # The level array alone is opened through its dimension names.
    alone = open_image(tmp_path / "img.zarr" / "0")
    assert (alone.shape, alone.axes, alone.array_path) == ((2, 20, 30), ("c", "y", "x"), "")


def test_ome_05_pixel_size_absent_without_unit(tmp_path):
    create_image(tmp_path / "img.zarr", (5, 6), np.uint8, axes=("y", "x"))
    assert open_image(tmp_path / "img.zarr").pixel_size is None


def test_memory_url(tmp_path):
    url = f"memory://{uuid.uuid4().hex}.zarr"
    data = _data((2, 10, 12), np.int16)
    _array(url, data, (1, 4, 4))
    source = open_image(url)
    assert source.url == url
    np.testing.assert_array_equal(source.read(slice(1, 9), slice(2, 12)), data[:, 1:9, 2:])
    clone = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(clone.read(slice(0, 10), slice(0, 12)), data)
    assert json.loads(json.dumps(source.identity()))["url"] == url
    with pytest.raises(InputNotFound):
        open_image(f"memory://{uuid.uuid4().hex}.zarr")


def test_missing_path(tmp_path):
    with pytest.raises(InputNotFound, match="does not exist"):
        open_image(tmp_path / "nope.zarr")


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_not_a_zarr_store(tmp_path, kind):
    path = tmp_path / "image.tif"
    if kind == "file":
        path.write_text("not zarr")
    else:
        path.mkdir()
    with pytest.raises(UnsupportedInput, match="unet ingest") as caught:
        open_image(path)
    assert "\n" not in str(caught.value)


def test_group_without_multiscales(tmp_path):
    zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    with pytest.raises(UnsupportedInput, match="multiscales"):
        open_image(tmp_path / "g.zarr")


@pytest.mark.parametrize(
    ("shape", "dtype", "message"),
    [
        ((0, 5), np.uint8, "empty"),
        ((3, 0, 5), np.uint8, "empty"),
        ((4, 5), bool, "dtype bool"),
        ((4, 5), np.complex64, "dtype complex64"),
    ],
)
def test_invalid_arrays(tmp_path, shape, dtype, message):
    zarr.create_array(
        store=str(tmp_path / "a.zarr"), shape=shape, dtype=dtype, chunks=(2,) * len(shape)
    )
    with pytest.raises(InvalidImage, match=message) as caught:
        open_image(tmp_path / "a.zarr")
    assert "\n" not in str(caught.value)


def test_read_outside_the_image(tmp_path):
    _array(tmp_path / "a.zarr", _data((10, 10)), (4, 4))
    source = open_image(tmp_path / "a.zarr")
    for rows in (slice(0, 11), slice(-1, 5), slice(0, 10, 2)):
        with pytest.raises(InvalidParameter):
            source.read(rows, slice(0, 10))


def test_pickle_round_trip_leaves_the_open_array_behind(tmp_path):
    data = _data((2, 12, 9))
    _array(tmp_path / "a.zarr", data, (1, 4, 4))
    source = open_image(tmp_path / "a.zarr")
    source.read(slice(0, 1), slice(0, 1))  # opens and caches the array
    assert "_array" not in source.__getstate__()
    clone = pickle.loads(pickle.dumps(source))
    assert isinstance(clone, ImageSource) and clone == source
    np.testing.assert_array_equal(clone.read(slice(0, 12), slice(0, 9)), data)


def test_identity_is_json_and_changes_when_rewritten(tmp_path):
    data = _data((10, 12))
    _array(tmp_path / "a.zarr", data, (4, 4))
    before = open_image(tmp_path / "a.zarr").identity()
    assert json.loads(json.dumps(before)) == before
    assert before["shape"] == [1, 10, 12] and before["chunks"] == [4, 4]
    assert open_image(tmp_path / "a.zarr").identity() == before
    time.sleep(0.02)  # file times tick at the kernel's clock resolution (a few ms)
    _array(tmp_path / "a.zarr", data + 1, (4, 4), overwrite=True)
    assert open_image(tmp_path / "a.zarr").identity() != before


def test_low_resolution_strided_without_pyramid(tmp_path):
    data = _data((2, 37, 53))
    _array(tmp_path / "a.zarr", data, (1, 8, 8))
    source = open_image(tmp_path / "a.zarr")
    image, factor = source.low_resolution(max_side=10)
    assert factor == 6  # ceil(53 / 10)
    assert image.dtype == np.float32 and image.shape == (2, 7, 9)
    np.testing.assert_array_equal(image, data[:, ::6, ::6].astype(np.float32))
    whole, factor = source.low_resolution(max_side=53)
    assert factor == 1
    np.testing.assert_array_equal(whole, data.astype(np.float32))


def test_low_resolution_uses_pyramid_levels(tmp_path):
    data = _data((1, 1, 1, 40, 60))
    level1 = _data((1, 1, 1, 20, 30)) + 5
    level2 = _data((1, 1, 1, 10, 15)) + 9
    _ome04(tmp_path / "img.zarr", data, [1.0] * 5, levels=[(level1, 2), (level2, 4)])
    source = open_image(tmp_path / "img.zarr")
    assert source.level_paths == ("0", "1", "2")
    image, factor = source.low_resolution(max_side=30)
    assert factor == 2
    np.testing.assert_array_equal(image[0], level1[0, 0, 0])
    # No level fits 5: the smallest one is strided by 3 more.
    image, factor = source.low_resolution(max_side=5)
    assert factor == 12 and image.shape == (1, 4, 5)
    np.testing.assert_array_equal(image[0], level2[0, 0, 0, ::3, ::3])
