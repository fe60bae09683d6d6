import pytest
import torch

from unet.errors import InvalidInputSize, UNetError
from unet.model import DoubleConv, UNet, center_crop, max_pool


def test_paper_config_parameter_count_and_shape():
    model = UNet()
    assert sum(p.numel() for p in model.parameters()) == 31_030_658
    assert model.halo == 92
    with torch.inference_mode():
        out = model(torch.zeros(1, 1, 572, 572))
    assert out.shape == (1, 2, 388, 388)


@pytest.mark.parametrize(
    "n, expected",
    [(188, 4), (204, 20), (572, 388), (508, 324), (1004, 820), (2044, 1860)],
)
def test_output_size_table_depth4(n, expected):
    assert UNet(base_channels=2).output_size(n) == expected


@pytest.mark.parametrize("n, near", [(500, "492 or 508"), (187, "188"), (573, "572 or 588")])
def test_output_size_invalid_names_nearest(n, near):
    with pytest.raises(InvalidInputSize, match=near) as info:
        UNet(base_channels=2).output_size(n)
    assert isinstance(info.value, ValueError) and isinstance(info.value, UNetError)


@pytest.mark.parametrize(
    "depth, smallest, halo", [(1, 18, 8), (2, 44, 20), (3, 92, 44), (5, 380, 188)]
)
def test_output_size_matches_forward_at_other_depths(depth, smallest, halo):
    model = UNet(base_channels=2, depth=depth)
    assert model.halo == halo
    for n in (smallest, smallest + 2**depth, smallest + 3 * 2**depth):
        with torch.inference_mode():
            out = model(torch.zeros(1, 1, n, n + 2**depth))
        assert out.shape[-2:] == (model.output_size(n), model.output_size(n + 2**depth))
        assert out.shape[-1] == n + 2**depth - 2 * halo


def test_same_padding_keeps_size_and_rejects_non_multiples():
    model = UNet(in_channels=3, num_classes=4, base_channels=2, padding="same")
    assert model.halo == 0
    with torch.inference_mode():
        assert model(torch.zeros(2, 3, 64, 48)).shape == (2, 4, 64, 48)
    assert model.output_size(64) == 64
    with pytest.raises(InvalidInputSize, match="48 or 64"):
        model.output_size(50)


def test_center_crop_takes_the_middle():
    x = torch.arange(36.0).reshape(1, 1, 6, 6)
    assert center_crop(x, 2, 2).flatten().tolist() == [14.0, 15.0, 20.0, 21.0]


@pytest.mark.parametrize("padding", [0, 1])
def test_joined_equals_the_double_conv_of_the_concatenation(padding):
    torch.manual_seed(0)
    block = DoubleConv(6, 3, padding)
    skip, up = torch.randn(2, 4, 11, 13), torch.randn(2, 2, 11, 13)
    expected = block(torch.cat([skip, up], dim=1))
    torch.testing.assert_close(block.joined(skip, up), expected, rtol=1e-5, atol=1e-5)


def test_joined_trains_every_input_channel():
    torch.manual_seed(0)
    block = DoubleConv(4, 2, 0)
    block.joined(torch.randn(1, 2, 8, 8), torch.randn(1, 2, 8, 8)).sum().backward()
    grad = block[0].weight.grad
    assert grad is not None and bool((grad[:, :2] != 0).any()) and bool((grad[:, 2:] != 0).any())


@pytest.mark.parametrize("shape", [(1, 3, 8, 10), (2, 4, 9, 7), (1, 1, 2, 2)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_inference_max_pool_equals_max_pool2d(shape, channels_last):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    pool = torch.nn.MaxPool2d(2, 2)
    with torch.inference_mode():
        pooled = max_pool(x, pool)
        assert torch.equal(pooled, pool(x))
    if channels_last:  # the next convolution takes it without a layout conversion
        assert pooled.is_contiguous(memory_format=torch.channels_last)
