"""The U-Net of Ronneberger, Fischer and Brox (2015).

Per level two 3x3 convolutions with ReLU, then 2x2 max-pooling; channels double per level. On the
way up a 2x2 up-convolution halves the channels, the skip features are centre-cropped to its size
(copy-and-crop) and concatenated, and two 3x3 convolutions follow. A 1x1 convolution maps to the
classes. With ``padding="valid"`` (the paper) the default network has 31,030,658 parameters and
maps 572x572 to 388x388.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from unet.tiling import Geometry, Padding


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by ReLU."""

    def __init__(self, in_channels: int, out_channels: int, padding: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=padding),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=padding),
            nn.ReLU(inplace=True),
        )


def center_crop(features: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centre crop of ``(N, C, H, W)`` features to ``(N, C, height, width)``."""
    top = (features.shape[-2] - height) // 2
    left = (features.shape[-1] - width) // 2
    return features[..., top : top + height, left : left + width]


class UNet(nn.Module):
    """The paper's U-Net.

    Parameters
    ----------
    in_channels: channels of the input image
    num_classes: output channels (logits); 1 means a sigmoid output
    base_channels: channels of the first level (64 in the paper)
    depth: number of poolings (4 in the paper)
    padding: ``"valid"`` (unpadded convolutions, exact tiling) or ``"same"`` (zero padding)

    Input float32 ``(N, in_channels, H, W)`` with H, W valid sides (see :meth:`output_size`);
    output float32 logits ``(N, num_classes, output_size(H), output_size(W))``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        base_channels: int = 64,
        depth: int = 4,
        padding: Padding = "valid",
    ) -> None:
        super().__init__()
        self.geometry = Geometry(depth=depth, padding=padding)
        self.config: dict[str, Any] = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "base_channels": base_channels,
            "depth": depth,
            "padding": padding,
        }
        conv_padding = 1 if padding == "same" else 0
        widths = [base_channels * 2**level for level in range(depth + 1)]

        self.encoders = nn.ModuleList()
        channels = in_channels
        for width in widths[:-1]:
            self.encoders.append(DoubleConv(channels, width, conv_padding))
            channels = width
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.bottom = DoubleConv(channels, widths[-1], conv_padding)

        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(depth)):
            self.upsamplers.append(
                nn.ConvTranspose2d(widths[level + 1], widths[level], kernel_size=2, stride=2)
            )
            self.decoders.append(DoubleConv(2 * widths[level], widths[level], conv_padding))
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    @property
    def in_channels(self) -> int:
        return self.config["in_channels"]

    @property
    def num_classes(self) -> int:
        return self.config["num_classes"]

    @property
    def depth(self) -> int:
        return self.config["depth"]

    @property
    def halo(self) -> int:
        """Input pixels lost per side: 92 for the paper's depth-4 valid network, 0 for same."""
        return self.geometry.halo

    def output_size(self, n: int) -> int:
        """Output side for input side ``n``; raises :class:`~unet.errors.InvalidInputSize`
        (a ``ValueError``) naming the nearest valid sides when ``n`` is not valid."""
        return self.geometry.output_size(n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for upsample, decoder in zip(self.upsamplers, self.decoders, strict=True):
            x = upsample(x)
            # Pop the skip and drop the upsampled features once concatenated: at the first level
            # these are the largest tensors of the pass, and holding them through the decoder's
            # convolutions raised the inference peak markedly (measured, benchmarks/README.md).
            skip = skips.pop()
            x = torch.cat([center_crop(skip, x.shape[-2], x.shape[-1]), x], dim=1)
            del skip
            x = decoder(x)
        return self.head(x)


def parameter_count(
    in_channels: int, num_classes: int, base_channels: int, depth: int, padding: str = "valid"
) -> int:
    """The number of parameters of ``UNet(in_channels, num_classes, base_channels, depth)``,
    computed without building it (a size check before anything is allocated)."""
    widths = [base_channels * 2**level for level in range(depth + 1)]

    def double(cin: int, cout: int) -> int:
        return cin * cout * 9 + cout + cout * cout * 9 + cout

    total, channels = 0, in_channels
    for width in widths[:-1]:
        total += double(channels, width)
        channels = width
    total += double(channels, widths[-1])
    for level in range(depth):
        total += widths[level + 1] * widths[level] * 4 + widths[level]
        total += double(2 * widths[level], widths[level])
    return total + widths[0] * num_classes + num_classes


def activation_count(
    in_channels: int, num_classes: int, base_channels: int, depth: int, padding: str, side: int
) -> int:
    """Float values of the feature maps one ``side`` x ``side`` tile makes in a forward pass
    (convolution, pooling, up-convolution and concatenation outputs): what a training step keeps
    for its backward pass, per tile; computed without building the network."""
    shrink = 0 if padding == "same" else 2
    widths = [base_channels * 2**level for level in range(depth + 1)]
    total, sides = side * side * in_channels, []
    for width in widths[:-1]:
        first, second = side - shrink, side - 2 * shrink
        total += width * (first * first + second * second)
        sides.append(second)
        side = second // 2
        total += width * side * side
    first, second = side - shrink, side - 2 * shrink
    total += widths[-1] * (first * first + second * second)
    side = second
    for level in reversed(range(depth)):
        side *= 2
        total += widths[level] * side * side * 3  # up-convolution, then the concatenation
        first, second = side - shrink, side - 2 * shrink
        total += widths[level] * (first * first + second * second)
        side = second
    return total + num_classes * side * side
