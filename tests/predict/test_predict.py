import numpy as np
import pytest
import torch
from testdata import make_model

from unet.errors import ChannelMismatch, InvalidImage, InvalidParameter, InvalidTileSize
from unet.predict.window import predict_array


def whole_image_reference(model, image):
    """One forward pass over the image mirror-padded by halo (+ the extra that makes it valid)."""
    geometry = model.geometry
    height, width = image.shape[-2:]
    padded_h = geometry.valid_at_least(height + 2 * model.halo)
    padded_w = geometry.valid_at_least(width + 2 * model.halo)
    padded = np.pad(
        image,
        (
            (0, 0),
            (model.halo, padded_h - height - model.halo),
            (model.halo, padded_w - width - model.halo),
        ),
        mode="reflect",
    )
    with torch.inference_mode():
        out = model(torch.from_numpy(padded)[None]).numpy()[0]
    return out[:, :height, :width]


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (5, 7), (37, 200), (129, 130), (250, 301)])
@pytest.mark.parametrize("tile_size", [236, 252, 572])
def test_tiled_equals_whole_image_depth4(shape, tile_size, rng):
    model = make_model(depth=4)
    image = rng.standard_normal((1, *shape)).astype(np.float32)
    tiled = predict_array(model, image, tile_size=tile_size, batch_size=3)
    reference = whole_image_reference(model, image)
    assert tiled.shape == (2, *shape) and tiled.dtype == np.float32
    assert reference.std() > 1e-3, "the reference must not be constant for the test to mean much"
    np.testing.assert_allclose(tiled, reference, atol=1e-4, rtol=0)


@pytest.mark.parametrize("depth, tile_size", [(2, 60), (2, 76), (3, 124)])
@pytest.mark.parametrize("shape", [(3, 2), (61, 90), (170, 47)])
def test_tiled_equals_whole_image_other_depths_and_channels(depth, tile_size, shape, rng):
    model = make_model(seed=depth, depth=depth, in_channels=3, num_classes=3, base_channels=6)
    image = rng.standard_normal((3, *shape)).astype(np.float32)
    tiled = predict_array(model, image, tile_size=tile_size, batch_size=2)
    np.testing.assert_allclose(tiled, whole_image_reference(model, image), atol=1e-4, rtol=0)


def test_tiling_really_splits_the_image(rng):
    # 300 pixels with 204-pixel tiles (20 kept) needs many tiles: the equality above is not
    # trivially one forward pass.
    from unet.tiling import axis_tiles

    assert len(axis_tiles(300, 204, make_model().geometry).origins) > 10


def test_default_tile_size_and_batch_size_do_not_change_the_result(rng):
    model = make_model()
    image = rng.standard_normal((1, 300, 200)).astype(np.float32)
    a = predict_array(model, image)
    b = predict_array(model, image, tile_size=204, batch_size=1)
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)


def test_bf16_autocast_agrees_with_fp32_on_the_mask(rng):
    model = make_model()
    image = rng.standard_normal((1, 120, 90)).astype(np.float32)
    fp32 = predict_array(model, image, tile_size=220).argmax(0)
    bf16 = predict_array(model, image, tile_size=220, precision="bf16")
    assert bf16.dtype == np.float32
    assert (bf16.argmax(0) == fp32).mean() > 0.95


def test_same_padding_model_runs_tiled(rng):
    model = make_model(padding="same", depth=3)
    image = rng.standard_normal((1, 70, 45)).astype(np.float32)
    out = predict_array(model, image, tile_size=128)
    assert out.shape == (2, 70, 45)
    assert np.isfinite(out).all()


def test_bad_inputs_are_refused(small_model):
    with pytest.raises(ChannelMismatch, match="3 channels but the model takes 1"):
        predict_array(small_model, np.zeros((3, 10, 10), np.float32))
    with pytest.raises(InvalidImage, match=r"\(C, H, W\)"):
        predict_array(small_model, np.zeros((10, 10), np.float32))
    with pytest.raises(InvalidImage, match="empty"):
        predict_array(small_model, np.zeros((1, 0, 10), np.float32))
    with pytest.raises(InvalidImage, match="NaN"):
        predict_array(small_model, np.full((1, 4, 4), np.nan, np.float32))
    with pytest.raises(InvalidTileSize, match="492 or 508"):
        predict_array(small_model, np.zeros((1, 4, 4), np.float32), tile_size=500)
    with pytest.raises(InvalidParameter, match="precision"):
        predict_array(small_model, np.zeros((1, 4, 4), np.float32), precision="fp8")
    with pytest.raises(InvalidParameter, match="batch size"):
        predict_array(small_model, np.zeros((1, 4, 4), np.float32), batch_size=0)


def test_auto_device_runs_on_what_is_there(small_model, rng):
    image = rng.standard_normal((1, 8, 8)).astype(np.float32)
    assert predict_array(small_model, image, device="auto").shape == (2, 8, 8)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_matches_cpu(rng):
    model = make_model()
    image = rng.standard_normal((1, 200, 150)).astype(np.float32)
    cpu = predict_array(model, image, tile_size=220)
    gpu = predict_array(model, image, tile_size=220, device="cuda")
    np.testing.assert_allclose(cpu, gpu, atol=1e-3)


@pytest.mark.parametrize("num_classes", [1, 2, 3])
def test_labels_on_the_device_equal_labels_of_the_logits(num_classes):
    from unet.predict.labels import labels_from_logits
    from unet.predict.window import predict_window

    model = make_model(depth=2, num_classes=num_classes)
    window = np.random.default_rng(num_classes).normal(size=(1, 200, 180)).astype(np.float32)
    out_shape = (100, 90)
    logits = predict_window(model, window, out_shape, tile_size=108, batch_size=3)
    labels = predict_window(model, window, out_shape, tile_size=108, batch_size=3, labels=True)
    assert labels.dtype == np.uint8 and labels.shape == out_shape
    assert len(np.unique(labels)) == max(num_classes, 2)
    np.testing.assert_array_equal(labels, labels_from_logits(logits))


def test_reuse_freed_memory_takes_on_glibc():
    import platform

    from unet.engine.allocator import reuse_freed_memory

    assert reuse_freed_memory() is (platform.libc_ver()[0] == "glibc")
