"""Batched overlap-tile inference on an in-memory array.

For a valid-padding model the tiled result is exactly one forward pass over the whole image
mirror-padded by ``halo`` (see :mod:`unet.tiling`): tiles are cropped, never blended.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

import unet.predict
from unet.errors import ChannelMismatch, InvalidImage, InvalidParameter
from unet.predict.device import (
    Precision,
    halved_batch,
    is_out_of_memory,
    resolve_device,
    resolve_precision,
)
from unet.predict.step import Normalization, use_channels_last
from unet.tiling import AxisTiles, axis_tiles, default_tile_size, input_window, mirror_pad

if TYPE_CHECKING:
    import torch

    from unet.network.model import UNet


def predict_window(
    model: UNet,
    window: np.ndarray,
    out_shape: tuple[int, int],
    *,
    tile_size: int,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    precision: Precision = "fp32",
    labels: bool = False,
    normalization: Normalization | None = None,
) -> np.ndarray:
    """Logits (or labels) of the output pixels ``(0 .. out_h-1, 0 .. out_w-1)`` of a padded
    input window.

    Parameters
    ----------
    window: (C, h, w) input in padded coordinates: ``window[:, 0, 0]`` is the input pixel
        ``halo`` (or the same-mode margin) above and left of output pixel (0, 0), and that
        position lies on the whole image's pooling grid (a multiple of ``2**depth``). At least
        :func:`window_shape` large. float32 and normalized, or with ``normalization`` raw in
        one of :data:`unet.predict.step.DEVICE_NORMALIZED`'s dtypes.
    out_shape: (out_h, out_w)
    labels: return the labels instead of the logits, computed on the device so that one byte a
        pixel comes back instead of ``4 * num_classes``: the argmax over the classes (the first
        on ties, as numpy's), or ``logit > 0`` for a one-class model. Equal to
        :func:`unet.predict.labels.labels_from_logits` of the logits, since casting bf16/fp16 logits to
        float32 is exact.
    normalization: ``(mean, std)`` float32 (C,): normalize the raw window's tiles on the device
        (:func:`unet.predict.step.normalized`: the same floats as on the host)

    Returns
    -------
    float32 (num_classes, out_h, out_w) logits, or with ``labels`` uint8 (out_h, out_w)

    Each batch goes to the device through :func:`unet.predict.device_step`, which holds a
    per-device lock: threads sharing a worker process overlap their reading and writing with one
    another's forward passes but never run two at once (one pass at a time keeps the activation
    memory of one batch, and on a CPU each pass uses every core).
    """

    geometry = model.geometry
    rows = axis_tiles(out_shape[0], tile_size, geometry)
    cols = axis_tiles(out_shape[1], tile_size, geometry)
    if window.shape[-2] < rows.window or window.shape[-1] < cols.window:
        raise InvalidImage(
            f"window {window.shape[-2:]} is smaller than the {rows.window}x{cols.window} "
            "the tiles need"
        )
    if batch_size < 1:
        raise InvalidParameter(f"batch size must be >= 1, got {batch_size}")
    torch_device = resolve_device(device) if isinstance(device, str) else device
    if next(model.parameters()).device != torch_device:
        model.to(torch_device)
    if model.training:
        # Walking the modules costs time even when nothing changes, a sizeable share of a
        # chunk's whole host time on a GPU machine.
        model.eval()
    use_channels_last(model)
    margin = geometry.context - geometry.halo  # non-zero only for same-padding models
    if labels:
        result = np.empty(out_shape, dtype=np.uint8)
    else:
        result = np.empty((model.num_classes, *out_shape), dtype=np.float32)
    origins = [(y, x) for y in rows.origins for x in cols.origins]
    precision = resolve_precision(precision, torch_device)
    crop = (slice(margin, margin + rows.keep), slice(margin, margin + cols.keep))
    start, size = 0, batch_size
    while start < len(origins):
        batch = origins[start : start + size]
        tiles = [window[:, y : y + rows.tile, x : x + cols.tile] for y, x in batch]
        # One tile (a whole chunk by default) goes as a view: torch copies it once anyway,
        # into channels-last order or onto the device.
        tiles = tiles[0][None] if len(tiles) == 1 else np.stack(tiles)
        try:
            # Looked up on the package at each call: the documented place to replace it.
            outputs = unet.predict.device_step(
                model,
                tiles,
                device=torch_device,
                precision=precision,
                crop=crop,
                labels=labels,
                normalization=normalization,
            )
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            outputs = None
        if outputs is None:
            # Outside the except block, so the failed batch's tensors can be freed.
            size = halved_batch(size, torch_device, rows.tile)
            continue
        for (y, x), tile_result in zip(batch, outputs, strict=True):
            _paste(result, tile_result, y, x, rows, cols)
        start += len(batch)
    return result


def predict_array(
    model: UNet,
    image: np.ndarray,
    *,
    tile_size: int | None = None,
    batch_size: int = 4,
    device: str = "cpu",
    precision: Precision = "fp32",
) -> np.ndarray:
    """Segment an in-memory, normalized image tile by tile.

    Parameters
    ----------
    model: a :class:`~unet.network.model.UNet`; moved to ``device``
    image: float32 (C, H, W), already normalized, any H, W >= 1
    tile_size: input side of the tiles (a valid size); default :func:`default_tile_size`.
        Axes shorter than one tile use the smallest valid tile that covers them.
    batch_size: tiles per forward pass
    device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``
    precision: ``"fp32"``, ``"bf16"``/``"fp16"`` autocast, or ``"auto"`` (see
        :func:`resolve_precision`)

    Returns
    -------
    float32 (num_classes, H, W) logits. For a valid-padding model this equals one forward pass
    over the whole image mirror-padded (numpy ``"reflect"``) by ``halo`` above and left and by
    ``halo`` plus the least extra that makes the size valid below and right, cropped to (H, W).
    """
    image = check_image(image, model.in_channels)
    geometry = model.geometry
    tile_size = default_tile_size(geometry) if tile_size is None else tile_size
    height, width = image.shape[-2:]
    region = input_window(slice(0, height), slice(0, width), (height, width), tile_size, geometry)
    window = mirror_pad(image, region.pad_before, region.pad_after)
    return predict_window(
        model,
        window,
        region.out_shape,
        tile_size=tile_size,
        batch_size=batch_size,
        device=device,
        precision=precision,
    )


def check_image(image: np.ndarray, channels: int) -> np.ndarray:
    """Validate a normalized ``(C, H, W)`` image and return it as float32."""
    if not isinstance(image, np.ndarray):
        raise InvalidImage(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3:
        raise InvalidImage(f"image must be (C, H, W), got shape {image.shape}: add a channel axis")
    check_layout(image.shape, image.dtype, channels)
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        raise InvalidImage(
            "image holds NaN or Inf: replace them (e.g. numpy.nan_to_num) first; "
            "`unet segment` gives such pixels label 0 (no data)"
        )
    return image


def check_layout(shape: tuple[int, ...], dtype: np.dtype, channels: int) -> None:
    """Refuse a ``(C, H, W)`` image (numpy or dask) whose channels are not the model's, that is
    empty, or whose dtype is not a real number type."""
    if shape[0] != channels:
        raise ChannelMismatch(
            f"image has {shape[0]} channels but the model takes {channels}: "
            "convert the image or use a model trained on it"
        )
    if 0 in shape:
        raise InvalidImage(f"image of shape {shape} is empty")
    if np.dtype(dtype).kind not in "fiu":
        raise InvalidImage(f"image dtype {dtype} is not a real number type")


def _paste(
    result: np.ndarray, tile: np.ndarray, y: int, x: int, rows: AxisTiles, cols: AxisTiles
) -> None:
    """Paste a tile's (..., keep, keep) output at (y, x) of (..., out_h, out_w) ``result``."""
    height = min(rows.keep, result.shape[-2] - y)
    width = min(cols.keep, result.shape[-1] - x)
    result[..., y : y + height, x : x + width] = tile[..., :height, :width]
