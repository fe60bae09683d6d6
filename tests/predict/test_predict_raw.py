"""Raw integer tiles normalized on the device: the same floats, logits and labels as tiles
normalized on the host."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from testdata import make_model

from unet.predict.step import normalized
from unet.predict.window import predict_window


def host_normalized(raw: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """What unet.network.checkpoint.Checkpoint.normalize computes."""
    image = raw.astype(np.float32, copy=True)
    image -= mean[:, None, None]
    image /= std[:, None, None]
    return image


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16"])
@pytest.mark.parametrize("channels", [1, 3])
def test_device_normalization_is_bit_identical_to_numpy(dtype, channels):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(channels)
    raw = rng.integers(info.min, info.max, size=(channels, 67, 45), endpoint=True).astype(dtype)
    # Awkward values: std with no short binary expansion, a mean between integers.
    mean = rng.uniform(-50, 300, channels).astype(np.float32)
    std = rng.uniform(0.3, 77.7, channels).astype(np.float32)
    on_device = normalized(torch.from_numpy(raw[None]), mean, std).numpy()[0]
    expected = host_normalized(raw, mean, std)
    assert on_device.dtype == np.float32
    np.testing.assert_array_equal(on_device.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("labels", [False, True])
def test_raw_window_gives_the_same_logits_and_labels_as_a_normalized_one(labels):
    model = make_model(depth=2, in_channels=2, num_classes=3)
    raw = np.random.default_rng(5).integers(0, 255, (2, 200, 180), endpoint=True).astype(np.uint8)
    mean, std = np.float32([97.3, 120.1]), np.float32([41.7, 33.3])
    options = {"tile_size": 108, "batch_size": 3, "labels": labels}
    on_host = predict_window(model, host_normalized(raw, mean, std), (100, 90), **options)
    on_device = predict_window(model, raw, (100, 90), normalization=(mean, std), **options)
    assert on_device.dtype == on_host.dtype
    np.testing.assert_array_equal(on_device, on_host)
