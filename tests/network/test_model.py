import pytest
import torch

from unet.errors import InvalidInputSize, UNetError
from unet.network.model import UNet, center_crop


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
