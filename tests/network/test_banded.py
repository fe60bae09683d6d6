"""Banded inference (unet/banded.py) against the plain forward pass of the same model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import make_model
from unet.errors import InvalidParameter
from unet.network.banded import _Level, banded_forward, max_pool


def _input(model, rows: int, cols: int, batch: int = 2, channels_last: bool = True):
    """Random input of the smallest valid sides >= rows x cols."""
    geometry = model.geometry
    shape = (batch, model.in_channels, geometry.valid_at_least(rows), geometry.valid_at_least(cols))
    inputs = torch.randn(shape, generator=torch.Generator().manual_seed(rows * 7 + cols))
    return inputs.contiguous(memory_format=torch.channels_last) if channels_last else inputs


@pytest.mark.parametrize(
    ("depth", "rows", "cols", "band_rows"),
    [
        (1, 60, 30, 2),  # bands of 2 rows: every take straddles bands
        (2, 150, 70, 6),
        (3, 300, 90, 10),
        (4, 250, 190, 64),  # the default rows
        (2, 90, 90, 4096),  # one band per level
    ],
)
@pytest.mark.parametrize("channels_last", [True, False])
def test_banded_equals_the_plain_forward_in_fp32(depth, rows, cols, band_rows, channels_last):
    model = make_model(depth=depth, in_channels=2, num_classes=3)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    inputs = _input(model, rows, cols, channels_last=channels_last)
    with torch.inference_mode():
        reference = model(inputs)
        banded = banded_forward(model, inputs, band_rows)
    assert reference.std() > 0.1, "a constant output would hide misplaced rows"
    assert banded.shape == reference.shape and banded.dtype == torch.float32
    # Bit for bit on the CPUs measured; the tolerance leaves oneDNN room to pick other kernels
    # for other shapes, while a band one row off would miss it by orders of magnitude.
    torch.testing.assert_close(banded, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("band_rows", [4, 64])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_banded_equals_the_plain_forward_under_autocast(band_rows, dtype):
    model = make_model(depth=3).to(memory_format=torch.channels_last)
    inputs = _input(model, 400, 120)
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype):
        reference = model(inputs)
        banded = banded_forward(model, inputs, band_rows)
    assert banded.dtype == reference.dtype == dtype
    equal = (banded == reference).float().mean().item()
    assert equal > 0.999, f"only {equal:.4%} of the {dtype} logits are equal"
    torch.testing.assert_close(banded.float(), reference.float(), atol=0.05, rtol=0.02)


def test_without_onednn_the_unfused_layers_give_the_same_logits(monkeypatch):
    model = make_model(depth=2)
    inputs = _input(model, 200, 100)
    with torch.inference_mode():
        fused = banded_forward(model, inputs, 8)
        monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
        unfused = banded_forward(model, inputs, 8)
        reference = model(inputs)
    torch.testing.assert_close(unfused, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused, unfused, atol=1e-5, rtol=1e-5)


def test_only_a_window_of_each_level_is_alive(monkeypatch):
    """A tall input streams through: no level ever holds more than a fraction of its rows."""
    held: dict[int, tuple[int, int]] = {}
    take = _Level.pieces

    def counting_take(self, first, end, consumer="next"):
        band = take(self, first, end, consumer)
        if self.band_rows == self.rows:  # the input, held by the caller
            return band
        alive = sum(part.shape[-2] for part in self._bands.values())
        most, _ = held.get(id(self), (0, 0))
        held[id(self)] = (max(most, alive), self.rows)
        return band

    monkeypatch.setattr(_Level, "pieces", counting_take)
    model = make_model(depth=2)
    inputs = _input(model, 2000, 60, batch=1)
    with torch.inference_mode():
        banded_forward(model, inputs, 16)
    computed = [(most, rows) for most, rows in held.values() if rows > 400]
    assert len(computed) >= 4, "the level-0 and level-1 features must have been seen"
    for most, rows in computed:
        assert most < 0.25 * rows, f"{most} of {rows} rows alive at once"


def test_max_pool_equals_torch_max_pooling():
    features = torch.randn(2, 5, 12, 18, generator=torch.Generator().manual_seed(3))
    features[0, 0, :4, :4] = 1.0  # ties
    for layout in (torch.contiguous_format, torch.channels_last):
        laid_out = features.contiguous(memory_format=layout)
        assert torch.equal(max_pool(laid_out), F.max_pool2d(laid_out, 2, 2))
        into = torch.full((2, 5, 7, 9), -1.0)
        max_pool(laid_out[:, :, 2:], out=into[:, :, 2:])  # a view, as banded pooling writes
        assert torch.equal(into[:, :, 2:], F.max_pool2d(laid_out, 2, 2)[:, :, 1:])
        assert (into[:, :, :2] == -1).all()


def test_bad_arguments_are_refused():
    with pytest.raises(InvalidParameter, match="valid-padding"):
        banded_forward(make_model(padding="same"), torch.zeros(1, 1, 64, 64))
    model = make_model(depth=1)
    with pytest.raises(InvalidParameter, match="even"):
        banded_forward(model, _input(model, 40, 40), 7)


def test_predict_runs_valid_models_in_bands_on_a_cpu(monkeypatch):
    """``predict.forward``: banded for a valid model on a CPU, the module for same padding."""
    import unet.network.banded
    from unet.predict.step import forward

    calls = []
    monkeypatch.setattr(
        unet.network.banded, "banded_forward", lambda model, x: calls.append(x.shape) or model(x)
    )
    valid, same = make_model(depth=1), make_model(depth=1, padding="same")
    with torch.inference_mode():
        forward(valid, _input(valid, 40, 40))
        out = forward(same, torch.zeros(1, 1, 32, 32))
    assert len(calls) == 1 and out.shape == (1, 2, 32, 32)


def test_banded_predictions_keep_tiles_equal_to_the_whole_image():
    """The pipeline's path (predict_array on a CPU) still equals one plain pass."""
    from unet.predict.window import predict_array
    from unet.tiling import mirror_pad

    model = make_model(depth=2)
    image = np.random.default_rng(5).normal(size=(1, 150, 97)).astype(np.float32)
    tiled = predict_array(model, image, tile_size=124)
    geometry = model.geometry
    rows, cols = (
        geometry.valid_at_least(150 + 2 * geometry.halo),
        geometry.valid_at_least(97 + 2 * geometry.halo),
    )
    padded = mirror_pad(
        image,
        before=(geometry.halo, geometry.halo),
        after=(rows - 150 - geometry.halo, cols - 97 - geometry.halo),
    )
    with torch.inference_mode():
        whole = model(torch.from_numpy(padded)[None])[0, :, :150, :97].numpy()
    np.testing.assert_allclose(tiled, whole, atol=1e-4, rtol=0)
