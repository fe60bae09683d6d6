"""Batched overlap-tile inference on an in-memory array.

For a valid-padding model the tiled result is exactly one forward pass over the whole image
mirror-padded by ``halo`` (see :mod:`unet.tiling`): tiles are cropped, never blended.
"""

from __future__ import annotations

import logging
import threading
from contextlib import nullcontext
from typing import TYPE_CHECKING, Literal

import numpy as np

from unet.errors import ChannelMismatch, DeviceOutOfMemory, InvalidImage, InvalidParameter
from unet.tiling import AxisTiles, Geometry, axis_tiles, mirror_pad

if TYPE_CHECKING:
    import torch

    from unet.model import UNet

Precision = Literal["fp32", "bf16", "fp16", "auto"]
PRECISIONS = ("fp32", "bf16", "fp16")
#: Largest chunk side for which the engine's default tile covers a whole chunk in one tile.
WHOLE_CHUNK_TILE_LIMIT = 2048
#: Output pixels per tile side aimed at by the default tile size (before adding the halo).
DEFAULT_TILE_OUTPUT = 512


def default_tile_size(geometry: Geometry, chunk: int | None = None) -> int:
    """The default tile side.

    For a chunk side up to ``WHOLE_CHUNK_TILE_LIMIT``, the smallest valid tile that covers the
    chunk in one tile: chunk origins lie on the pooling grid when the chunk side is a multiple of
    ``2**depth``, so each chunk is one forward pass and only the halo is computed twice (measured
    10% faster than 512-pixel tiles on 1024 chunks). Otherwise, and for in-memory arrays, the
    smallest valid tile keeping at least ``DEFAULT_TILE_OUTPUT`` output pixels a side.
    """
    if chunk is not None and chunk <= WHOLE_CHUNK_TILE_LIMIT:
        return geometry.valid_at_least(chunk + 2 * geometry.context)
    return geometry.valid_at_least(DEFAULT_TILE_OUTPUT + 2 * geometry.context)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when present, else CPU; anything else is passed to ``torch.device``."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise InvalidParameter(
            f"unknown device {device!r}: use auto, cpu, cuda or cuda:N"
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidParameter(f"device {device!r} asked for but no CUDA GPU is visible: use cpu")
    return resolved


def autocast(device: torch.device, precision: str):
    """Autocast context for ``precision`` on ``device`` (a no-op for fp32)."""
    import torch

    if precision not in PRECISIONS:
        raise InvalidParameter(
            f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}"
        )
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``"auto"`` -> ``"bf16"`` where the device computes it natively (CUDA with bf16, or a CPU
    with AVX512-BF16 or AMX), else ``"fp32"``; other values are returned as they are.

    bf16 roughly doubles CPU throughput here and kept 99.98% of mask pixels equal to fp32 on the
    bundled model (see README, Benchmarks).
    """
    import torch

    if precision != "auto":
        return precision
    resolved = resolve_device(device) if isinstance(device, str) else device
    if resolved.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "bf16" if native else "fp32"


def window_shape(out_shape: tuple[int, int], tile_size: int, geometry: Geometry) -> tuple[int, int]:
    """Input window ``(h, w)``, in padded coordinates, that :func:`predict_window` needs to
    produce ``out_shape`` output pixels with tiles of ``tile_size``."""
    return (
        axis_tiles(out_shape[0], tile_size, geometry).window,
        axis_tiles(out_shape[1], tile_size, geometry).window,
    )


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
) -> np.ndarray:
    """Logits (or labels) of the output pixels ``(0 .. out_h-1, 0 .. out_w-1)`` of a padded
    input window.

    Parameters
    ----------
    window: float32 (C, h, w), normalized input in padded coordinates: ``window[:, 0, 0]`` is the
        input pixel ``halo`` (or the same-mode margin) above and left of output pixel (0, 0), and
        that position lies on the whole image's pooling grid (a multiple of ``2**depth``).
        At least :func:`window_shape` large.
    out_shape: (out_h, out_w)
    labels: return the labels instead of the logits, computed on the device so that one byte a
        pixel comes back instead of ``4 * num_classes``: the argmax over the classes (the first
        on ties, as numpy's), or ``logit > 0`` for a one-class model. Equal to
        :func:`unet.worker.labels_from_logits` of the logits, since casting bf16/fp16 logits to
        float32 is exact.

    Returns
    -------
    float32 (num_classes, out_h, out_w) logits, or with ``labels`` uint8 (out_h, out_w)

    The device part of each batch (copy in, forward, copy out) holds a per-device lock, so that
    threads sharing a worker process overlap their reading and writing with one another's
    forward passes but never run two at once: one pass at a time keeps the activation memory of
    one batch, and on a CPU each pass uses every core.
    """
    import torch

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
    model.eval()
    use_channels_last(model)
    margin = geometry.context - geometry.halo  # non-zero only for same-padding models
    if labels:
        result = np.empty(out_shape, dtype=np.uint8)
    else:
        result = np.empty((model.num_classes, *out_shape), dtype=np.float32)
    lock = device_lock(torch_device)
    origins = [(y, x) for y in rows.origins for x in cols.origins]
    precision = resolve_precision(precision, torch_device)
    start, size = 0, batch_size
    with torch.inference_mode(), autocast(torch_device, precision):
        while start < len(origins):
            batch = origins[start : start + size]
            try:
                tiles = [window[:, y : y + rows.tile, x : x + cols.tile] for y, x in batch]
                # One tile (a whole chunk by default) goes as a view: torch copies it once
                # anyway, into channels-last order or onto the device.
                tiles = tiles[0][None] if len(tiles) == 1 else np.stack(tiles)
                with lock:
                    inputs = torch.from_numpy(tiles).to(torch_device, non_blocking=True)
                    inputs = inputs.contiguous(memory_format=torch.channels_last)
                    outputs = forward(model, inputs)
                    inputs = None
                    outputs = outputs[..., margin : margin + rows.keep, margin : margin + cols.keep]
                    outputs = _labels(outputs) if labels else outputs.float()
                    outputs = outputs.cpu().numpy()
            except Exception as error:
                if not _is_out_of_memory(error):
                    raise
                outputs = None
            if outputs is None:
                # Outside the except block, so the failed batch's tensors can be freed.
                inputs = None
                size = _halved_batch(size, torch_device, rows.tile)
                continue
            for (y, x), tile_result in zip(batch, outputs, strict=True):
                _paste(result, tile_result, y, x, rows, cols)
            start += len(batch)
    return result


_DEVICE_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()


def device_lock(device: torch.device) -> threading.Lock:
    """The lock of ``device`` in this process (one per device, shared by all threads)."""
    with _LOCKS_LOCK:
        return _DEVICE_LOCKS.setdefault(str(device), threading.Lock())


def _labels(logits: torch.Tensor) -> torch.Tensor:
    """uint8 (N, h, w) labels of (N, K, h, w) logits: argmax, or ``> 0`` when K = 1.

    For K = 2 the argmax is ``logit 1 > logit 0`` (class 0 on ties, as argmax), measured 6x
    faster than ``argmax`` on a CPU.
    """
    import torch

    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).to(torch.uint8)
    if logits.shape[1] == 2:
        return (logits[:, 1] > logits[:, 0]).to(torch.uint8)
    return logits.argmax(dim=1).to(torch.uint8)


def forward(model: UNet, inputs: torch.Tensor) -> torch.Tensor:
    """``model(inputs)`` as inference runs it: on a CPU, a valid-padding model runs in bands of
    rows (:func:`unet.banded.banded_forward`), which gives the same logits with a fraction of the
    activation memory; on a GPU, where memory is not what limits, in one piece.

    Call it under ``torch.inference_mode`` with the model in eval mode.
    """
    if inputs.device.type == "cpu" and model.geometry.padding == "valid":
        from unet.banded import banded_forward

        return banded_forward(model, inputs)
    return model(inputs)


def use_channels_last(model: UNet) -> None:
    """Store the model's convolution weights channels-last (NHWC), once.

    oneDNN on CPU and cuDNN on GPU run NHWC convolutions without the layout conversions NCHW
    needs: measured 2.0x (bf16) and 1.9x (fp32) model throughput on 2 AVX512-BF16 cores
    (README, Benchmarks). The values and the results are unchanged (within float rounding).
    """
    import torch

    weight = model.bottom[0].weight
    if not weight.is_contiguous(memory_format=torch.channels_last):
        model.to(memory_format=torch.channels_last)


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
    model: a :class:`~unet.model.UNet`; moved to ``device``
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
    out_shape = image.shape[-2:]
    needed = window_shape(out_shape, tile_size, geometry)
    context = geometry.context
    window = mirror_pad(
        image,
        before=(context, context),
        after=(needed[0] - context - out_shape[0], needed[1] - context - out_shape[1]),
    )
    return predict_window(
        model,
        window,
        out_shape,
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
    if image.shape[0] != channels:
        raise ChannelMismatch(
            f"image has {image.shape[0]} channels but the model takes {channels}: "
            "convert the image or use a model trained on it"
        )
    if 0 in image.shape:
        raise InvalidImage(f"image of shape {image.shape} is empty")
    if image.dtype.kind not in "fiu":
        raise InvalidImage(f"image dtype {image.dtype} is not a real number type")
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        raise InvalidImage(
            "image holds NaN or Inf: replace them (e.g. numpy.nan_to_num) first; "
            "`unet segment` gives such pixels label 0 (no data)"
        )
    return image


def _is_out_of_memory(error: Exception) -> bool:
    import torch

    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error)
    )


def _halved_batch(size: int, device: torch.device, tile: int) -> int:
    """The batch size to retry with after running out of memory with ``size`` tiles."""
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
    if size == 1:
        raise DeviceOutOfMemory(
            f"{device} ran out of memory with one {tile}x{tile} tile per forward pass: use a "
            "smaller --tile-size, --precision bf16 or fp16, or fewer workers per GPU"
        )
    smaller = size // 2
    logging.getLogger(__name__).warning(
        "%s ran out of memory with %d tiles per forward pass: going on with %d",
        device,
        size,
        smaller,
    )
    return smaller


def _paste(
    result: np.ndarray, tile: np.ndarray, y: int, x: int, rows: AxisTiles, cols: AxisTiles
) -> None:
    """Paste a tile's (..., keep, keep) output at (y, x) of (..., out_h, out_w) ``result``."""
    height = min(rows.keep, result.shape[-2] - y)
    width = min(cols.keep, result.shape[-1] - x)
    result[..., y : y + height, x : x + width] = tile[..., :height, :width]
