"""Inference of a valid-padding U-Net in bands of rows streamed through its levels: the same
logits as one forward pass, in a fraction of the memory.

A plain forward pass holds whole levels at once: at a 1116^2 tile of the bundled model each
level-0 tensor is 40 MB in bf16, the skip features stay alive until the decoder comes back up,
and glibc's heap grows well past the 140 MB alive at the peak as tensors of many sizes come and
go. Every layer of the U-Net is local in the rows, though: a band of ``r`` output rows of a
level's two valid 3x3 convolutions needs ``r + 4`` rows of its input, and 2x2 max-pooling and the
2x2 up-convolution map each pair of rows to one row and back. So each level here is a
:class:`_Level` that computes its bands when a consumer asks for their rows and drops them once
every consumer has moved past: the head pulls the output band by band, and only a window of
rows of each level is alive at any time, whatever the tile's height.

Each output pixel is computed from the same inputs by the same operations as in ``model(x)``,
so the logits are equal (bit for bit with oneDNN on a CPU: ``tests/test_banded.py``). What the
bands cost is the 2 rows that neighbouring bands of each 3x3 convolution both compute, and more,
smaller operations. Rows that straddle two bands below are not joined by a copy of their own:
pooling writes them into one tensor, and the decoder copies them into its concatenation. What
pays for the bands is the ReLU computed inside each convolution (oneDNN's post-op), max-pooling
without the int64 indices PyTorch's CPU pooling writes, and the weights cast to the compute dtype
once per pass instead of once per convolution by autocast (README, Benchmarks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from unet.errors import InvalidParameter

if TYPE_CHECKING:
    import torch
    from torch import nn

    from unet.network.model import UNet

#: Rows per band, at every level. Measured on 2 CPU cores with the bundled model at tile 1116,
#: bf16 (``benchmarks/banded_ab.py``: passes alternated in one process, peak RSS of a fresh one;
#: figures in benchmarks/README.md): about the time of ``model(x)`` in far less memory; 128 rows
#: gain little time for more memory, 32 rows save some memory but cost time. Whole levels
#: (``band_rows`` at least the tile) are faster than ``model(x)`` but take no less memory.
BAND_ROWS = 64
#: Rows that two valid 3x3 convolutions take from the rows below them.
_SHRINK = 4


def banded_forward(model: UNet, x: torch.Tensor, band_rows: int = BAND_ROWS) -> torch.Tensor:
    """Logits of a valid-padding U-Net, computed in bands of rows streamed through the levels.

    Parameters
    ----------
    model: a :class:`~unet.network.model.UNet` with ``padding="valid"``
    x: float (N, in_channels, H, W) input of valid sides (see ``model.output_size``), on the
        model's device. Under ``torch.autocast`` the bands are computed in its dtype, as
        autocast computes the convolutions of ``model(x)``.
    band_rows: rows per band at every level (even, >= 2); a level with fewer rows is one band

    Returns
    -------
    (N, num_classes, output_size(H), output_size(W)) logits equal to ``model(x)``: in the
    autocast dtype under autocast, else in the model's.
    """
    import torch

    if model.geometry.padding != "valid":
        raise InvalidParameter(
            "banded inference needs a valid-padding model: same padding is not local in the rows"
        )
    if band_rows < 2 or band_rows % 2:
        raise InvalidParameter(f"band rows must be even and >= 2, got {band_rows}")
    device = x.device.type
    dtype = (
        torch.get_autocast_dtype(device)
        if torch.is_autocast_enabled(device)
        else model.head.weight.dtype
    )
    layers = _Layers(dtype, device)
    with torch.autocast(device, enabled=False):
        level = _Level.whole(x.to(dtype))
        skips = []
        for encoder in model.encoders:
            features = layers.encode(encoder, level, band_rows)
            skips.append(features)
            level = layers.pool(features)
        level = layers.encode(model.bottom, level, band_rows, skip=False)
        for upsample, decoder in zip(model.upsamplers, model.decoders, strict=True):
            level = layers.decode(upsample, decoder, level, skips.pop(), band_rows)
        head = layers.convolution(model.head)
        bands = [head(level.take(first, end)) for first, end in level.bands()]
        return bands[0] if len(bands) == 1 else torch.cat(bands, dim=2)


def max_pool(features: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """2x2 max-pooling with stride 2 of (N, C, H, W) features with even H and W.

    The values of ``F.max_pool2d(features, 2)``, as the maximum of four strided views: PyTorch's
    CPU max-pooling also writes the int64 index of each maximum, and was slower for a
    1112^2 x 16 level in bf16 on 2 cores (benchmarks/README.md). ``out``: an
    (N, C, H / 2, W / 2) tensor, or a view, to write the result into.
    """
    import torch

    if out is None:
        top = torch.maximum(features[..., ::2, ::2], features[..., ::2, 1::2])
        return torch.maximum(
            top, torch.maximum(features[..., 1::2, ::2], features[..., 1::2, 1::2])
        )
    torch.maximum(features[..., ::2, ::2], features[..., ::2, 1::2], out=out)
    torch.maximum(out, features[..., 1::2, ::2], out=out)
    return torch.maximum(out, features[..., 1::2, 1::2], out=out)


class _Level:
    """A level's features (N, C, rows, W), computed in bands of ``band_rows`` on demand.

    ``compute(first, end)`` returns rows ``first .. end - 1``. Each consumer asks for rows that
    never move up (:meth:`take`) and stops at a last row (:meth:`read_until`, the level's end by
    default), so a band is dropped as soon as every consumer has asked for a row below it or has
    taken its last row, and no band is computed twice.
    """

    def __init__(
        self,
        rows: int,
        band_rows: int,
        compute: Callable[[int, int], torch.Tensor],
        consumers: tuple[str, ...] = ("next",),
    ) -> None:
        self.rows = rows
        self.band_rows = band_rows
        self._compute = compute
        self._bands: dict[int, torch.Tensor] = {}
        self._cursors = dict.fromkeys(consumers, 0)
        self._last_rows = dict.fromkeys(consumers, rows)

    @classmethod
    def whole(cls, features: torch.Tensor) -> _Level:
        """A level that is already computed (the input)."""
        rows = features.shape[-2]
        return cls(rows, rows, lambda first, end: features[:, :, first:end])

    def bands(self) -> list[tuple[int, int]]:
        """``(first, end)`` of each band, top to bottom."""
        return [
            (first, min(first + self.band_rows, self.rows))
            for first in range(0, self.rows, self.band_rows)
        ]

    def read_until(self, consumer: str, end: int) -> None:
        """``consumer`` will take no row at or below ``end``."""
        self._last_rows[consumer] = end

    def pieces(self, first: int, end: int, consumer: str = "next") -> list[torch.Tensor]:
        """Rows ``first .. end - 1`` for ``consumer``, as views of the bands that hold them, top
        to bottom: callers that copy the rows anyway take them without a concatenation."""
        pieces = []
        for index in range(first // self.band_rows, (end - 1) // self.band_rows + 1):
            top = index * self.band_rows
            band = self._bands.get(index)
            if band is None:
                band = self._compute(top, min(top + self.band_rows, self.rows))
                self._bands[index] = band
            pieces.append(band[:, :, max(first - top, 0) : end - top])
        done = end >= self._last_rows[consumer]
        self._cursors[consumer] = self.rows if done else first
        lowest = min(self._cursors.values())
        for index in [i for i in self._bands if min((i + 1) * self.band_rows, self.rows) <= lowest]:
            del self._bands[index]
        return pieces

    def take(self, first: int, end: int, consumer: str = "next") -> torch.Tensor:
        """Rows ``first .. end - 1`` for ``consumer``: a view when one band holds them."""
        import torch

        pieces = self.pieces(first, end, consumer)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)


class _Pooled:
    """2x2 max-pooling of a level, computed for the rows a consumer asks for and not kept.

    Pooling is cheap next to a convolution, so the 2 rows that neighbouring requests share are
    pooled twice; in exchange each request's rows are written straight into one tensor, band by
    band below, where cached bands would need a copy to join them.
    """

    def __init__(self, features: _Level) -> None:
        self.rows = features.rows // 2
        self._features = features

    def take(self, first: int, end: int) -> torch.Tensor:
        """Rows ``first .. end - 1`` of the pooled level, (N, C, end - first, W // 2)."""
        import torch

        pieces = self._features.pieces(2 * first, 2 * end)
        n, c, _, w = pieces[0].shape
        out = torch.empty(
            (n, c, end - first, w // 2),
            dtype=pieces[0].dtype,
            device=pieces[0].device,
            memory_format=_layout(pieces[0]),
        )
        row = 0
        for piece in pieces:  # every band starts on an even row
            max_pool(piece, out=out[:, :, row : row + piece.shape[-2] // 2])
            row += piece.shape[-2] // 2
        return out


def _copy_rows(pieces: list[torch.Tensor], into: torch.Tensor) -> None:
    """Copy ``pieces`` of (N, C, rows_i, W) one below the other into (N, C, sum rows_i, W)."""
    row = 0
    for piece in pieces:
        into[:, :, row : row + piece.shape[-2]] = piece
        row += piece.shape[-2]


def _layout(features: torch.Tensor) -> torch.memory_format:
    """The memory format of (N, C, H, W) ``features``: channels_last where channels are
    innermost, as oneDNN returns them for channels_last inputs."""
    import torch

    channels_last = features.shape[1] > 1 and features.stride(1) == 1
    return torch.channels_last if channels_last else torch.contiguous_format


class _Layers:
    """The model's layers as functions of bands, computed in ``dtype`` on ``device``; on a CPU
    in float32 or bfloat16 with oneDNN's fused convolution and ReLU where oneDNN is there."""

    def __init__(self, dtype: torch.dtype, device: str) -> None:
        import torch

        self.dtype = dtype
        # oneDNN's bf16 convolutions need AVX512 (or AVX-NE-CONVERT); elsewhere, e.g. on AVX2
        # CPUs, the bands run through F.conv2d, which computes bf16 without them.
        bf16_fused = dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        self.fused = (
            device == "cpu"
            and (dtype == torch.float32 or bf16_fused)
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
        )

    def _cast(self, layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The layer's weight and bias in the compute dtype, cast once for the whole pass."""
        bias = None if layer.bias is None else layer.bias.to(self.dtype)
        return layer.weight.to(self.dtype), bias

    def convolution(self, conv: nn.Conv2d, relu: bool = False) -> Callable:
        """``conv`` (valid, stride 1), then ReLU if ``relu``, as one function of a band."""
        import torch
        import torch.nn.functional as F

        weight, bias = self._cast(conv)
        if relu and self.fused:
            # oneDNN applies the ReLU to each result before storing it: one pass less over the
            # band, and the same values, since rounding keeps the sign.
            def conv_relu(band: torch.Tensor) -> torch.Tensor:
                return torch.ops.mkldnn._convolution_pointwise(
                    band, weight, bias, [0, 0], [1, 1], [1, 1], 1, "relu", [], ""
                )

            return conv_relu
        if relu:
            return lambda band: torch.relu_(F.conv2d(band, weight, bias))
        return lambda band: F.conv2d(band, weight, bias)

    def double_conv(self, block: nn.Sequential) -> Callable:
        """One of the U-Net's blocks: 3x3 convolution, ReLU, 3x3 convolution, ReLU."""
        first, second = self.convolution(block[0], relu=True), self.convolution(block[2], relu=True)

        def double_conv(band: torch.Tensor) -> torch.Tensor:
            band = first(band)  # drops the input before the second convolution, as nn.Sequential
            return second(band)

        return double_conv

    def encode(
        self, block: nn.Sequential, source: _Level | _Pooled, band_rows: int, skip: bool = True
    ) -> _Level:
        """The level that ``block`` computes from ``source``, 4 rows shorter; ``skip``: the
        decoder reads it too."""
        double_conv = self.double_conv(block)
        return _Level(
            source.rows - _SHRINK,
            band_rows,
            lambda first, end: double_conv(source.take(first, end + _SHRINK)),
            consumers=("next", "skip") if skip else ("next",),
        )

    def pool(self, features: _Level) -> _Pooled:
        """2x2 max-pooling of ``features``, computed as the next level asks for its rows."""
        return _Pooled(features)

    def decode(
        self,
        upsample: nn.ConvTranspose2d,
        block: nn.Sequential,
        below: _Level,
        skip: _Level,
        band_rows: int,
    ) -> _Level:
        """A decoder level: up-convolve ``below``, concatenate the centre-cropped ``skip``
        (copy-and-crop) and apply ``block``; 4 rows shorter than the up-convolved rows."""
        import torch
        import torch.nn.functional as F

        weight, bias = self._cast(upsample)
        double_conv = self.double_conv(block)
        height = 2 * below.rows
        top = (skip.rows - height) // 2
        skip.read_until("skip", top + height)

        def inputs(first: int, end: int) -> torch.Tensor:
            """The centre-cropped skip rows and the up-convolved rows ``first .. end - 1``,
            concatenated: each piece of either is copied once, into its place."""
            # first and end are even: the up-convolution's rows map to whole rows below.
            ups = [
                F.conv_transpose2d(piece, weight, bias, stride=2)
                for piece in below.pieces(first // 2, end // 2)
            ]
            skips = skip.pieces(top + first, top + end, "skip")
            n, up_channels, _, width = ups[0].shape
            channels = skips[0].shape[1]
            left = (skips[0].shape[-1] - width) // 2
            joined = torch.empty(
                (n, channels + up_channels, end - first, width),
                dtype=ups[0].dtype,
                device=ups[0].device,
                memory_format=_layout(ups[0]),
            )
            _copy_rows([piece[..., left : left + width] for piece in skips], joined[:, :channels])
            _copy_rows(ups, joined[:, channels:])
            return joined

        def compute(first: int, end: int) -> torch.Tensor:
            return double_conv(inputs(first, end + _SHRINK))

        return _Level(height - _SHRINK, band_rows, compute)
