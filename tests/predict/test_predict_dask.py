"""predict_dask: lazy, chunked like its input, and equal to predict_array of the whole image."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from testdata import make_model

import unet
import unet.predict
from unet.errors import ChannelMismatch, InvalidImage
from unet.predict.labels import labels_from_logits


@pytest.mark.parametrize(
    "shape, chunks, channels, depth, num_classes",
    [
        ((150, 230), (64, 48), 1, 2, 2),  # chunk origins off the pooling grid (48 = 3 * 16 ...)
        ((3, 97, 71), (1, 40, 30), 3, 2, 3),  # channels chunked apart, odd sides
        ((5, 9), (4, 4), 1, 3, 2),  # blocks far smaller than the halo: windows span many
        ((1, 70, 90), (1, 70, 90), 1, 2, 1),  # one block; one-class model (logit > 0)
    ],
)
def test_equals_predict_array_of_the_whole_image(shape, chunks, channels, depth, num_classes):
    model = make_model(in_channels=channels, depth=depth, num_classes=num_classes)
    rng = np.random.default_rng(7)
    image = rng.normal(size=shape).astype(np.float32)
    array = da.from_array(image, chunks=chunks)
    tile = model.geometry.valid_at_least(100)
    whole = unet.predict_array(model, image if image.ndim == 3 else image[None], tile_size=tile)

    logits = unet.predict_dask(model, array, tile_size=tile, logits=True)
    labels = unet.predict_dask(model, array, tile_size=tile)
    assert labels.chunks == array.chunks[-2:], "chunked like the input's image axes"
    assert logits.chunks == ((num_classes,), *array.chunks[-2:])
    assert (labels.dtype, logits.dtype) == (np.uint8, np.float32)
    computed = logits.compute(scheduler="threads")
    np.testing.assert_allclose(computed, whole, atol=1e-4, rtol=0)
    expected = labels_from_logits(whole)
    ordered = np.sort(whole, axis=0)
    near_tie = (ordered[-1] - ordered[-2] < 1e-4) if num_classes > 1 else np.abs(whole[0]) < 1e-4
    differ = labels.compute(scheduler="threads") != expected
    assert not (differ & ~near_tie).any()
    assert len(np.unique(expected)) > 1, "a constant mask would make the comparison weak"


def test_nothing_runs_until_computed_and_only_the_blocks_needed(monkeypatch):
    model = make_model(depth=2)
    image = np.random.default_rng(0).normal(size=(128, 192)).astype(np.float32)
    calls = []
    step = unet.predict.device_step

    def counting(*args, **kwargs):
        calls.append(kwargs.get("crop"))
        return step(*args, **kwargs)

    monkeypatch.setattr(unet.predict, "device_step", counting)
    labels = unet.predict_dask(model, da.from_array(image, chunks=(64, 64)), tile_size=108)
    assert calls == [], "building the graph runs nothing"
    corner = labels[:64, :64].compute(scheduler="threads")
    assert len(calls) == 1, "one block of six, one tile"
    whole = labels_from_logits(unet.predict_array(model, image[None], tile_size=108))
    assert np.array_equal(corner, whole[:64, :64])


def test_usable_from_xarray():
    import xarray

    model = make_model(in_channels=2, depth=2)
    image = np.random.default_rng(1).normal(size=(2, 60, 80)).astype(np.float32)
    data = xarray.DataArray(
        da.from_array(image, chunks=(2, 32, 32)), dims=("c", "y", "x"), name="image"
    )
    mask = xarray.apply_ufunc(
        lambda block: unet.predict_dask(model, block, tile_size=108),
        data,
        input_core_dims=[["c", "y", "x"]],
        output_core_dims=[["y", "x"]],
        dask="allowed",
    )
    assert mask.dims == ("y", "x") and mask.chunks == data.chunks[1:]
    whole = labels_from_logits(unet.predict_array(model, image, tile_size=108))
    assert np.array_equal(mask.values, whole)


def test_bad_inputs_are_refused():
    model = make_model(depth=2)
    with pytest.raises(InvalidImage, match="dask array"):
        unet.predict_dask(model, np.zeros((20, 20), np.float32))
    with pytest.raises(ChannelMismatch, match="3 channels"):
        unet.predict_dask(model, da.zeros((3, 20, 20), chunks=10))
    with pytest.raises(InvalidImage, match=r"\(C, H, W\) or \(H, W\)"):
        unet.predict_dask(model, da.zeros((1, 1, 20, 20), chunks=10))
    holed = np.zeros((40, 40), np.float32)
    holed[30, 30] = np.nan
    lazy = unet.predict_dask(model, da.from_array(holed, chunks=20), tile_size=108)
    with pytest.raises(InvalidImage, match="NaN"):
        lazy.compute(scheduler="threads")
