"""Devices and precisions: ``auto`` resolved, autocast contexts, one lock per device, and what
to do when a device runs out of memory."""

from __future__ import annotations

import logging
import threading
from contextlib import nullcontext
from typing import TYPE_CHECKING, Literal

from unet.errors import DeviceOutOfMemory, InvalidParameter

if TYPE_CHECKING:
    import torch


Precision = Literal["fp32", "bf16", "fp16", "auto"]


PRECISIONS = ("fp32", "bf16", "fp16")


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
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise InvalidParameter(
            f"device {device!r} asked for but this machine has {torch.cuda.device_count()} "
            f"CUDA GPU(s): use cuda:0 .. cuda:{torch.cuda.device_count() - 1}, or auto"
        )
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

    bf16 raises CPU throughput markedly here and kept nearly all mask pixels equal to fp32 on
    the bundled model (see benchmarks/README.md).
    """
    import torch

    if precision != "auto":
        return precision
    resolved = resolve_device(device) if isinstance(device, str) else device
    if resolved.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "bf16" if native else "fp32"


_DEVICE_LOCKS: dict[str, threading.Lock] = {}


_LOCKS_LOCK = threading.Lock()


def device_lock(device: torch.device) -> threading.Lock:
    """The lock of ``device`` in this process (one per device, shared by all threads)."""
    with _LOCKS_LOCK:
        return _DEVICE_LOCKS.setdefault(str(device), threading.Lock())


def is_out_of_memory(error: Exception) -> bool:
    import torch

    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error)
    )


def halved_batch(size: int, device: torch.device, tile: int) -> int:
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
