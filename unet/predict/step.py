"""The device's part of a batch: copy in, normalize, forward, labels, copy out.

:func:`device_step` is the only place where a batch of tiles meets the accelerator. Everything
around it (reading and mirroring windows, cutting tiles, pasting results, writing chunks) is
host work; a benchmark can replace this one function by a stand-in that only waits
(:mod:`unet.bench.simulate`), and so measure on any machine whether the host side could keep a
device of a given speed busy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from unet.network.model import UNet

#: ``(mean, std)``, float32 (C,) each: a checkpoint's normalization, applied on the device.
Normalization = tuple[np.ndarray, np.ndarray]

#: Raw dtypes that go to the device as they are and are normalized there: float32 holds every
#: value of these exactly. Other inputs (floats, which may hold NaN, and wider integers) are
#: normalized on the host.
DEVICE_NORMALIZED = ("uint8", "int8", "uint16", "int16")


def device_step(
    model: UNet,
    tiles: np.ndarray,
    *,
    device: torch.device,
    precision: str,
    crop: tuple[slice, slice],
    labels: bool,
    normalization: Normalization | None = None,
) -> np.ndarray:
    """Run one batch of tiles on ``device`` and bring the kept part of its output back.

    Parameters
    ----------
    model: a :class:`~unet.network.model.UNet` on ``device``, in eval mode
    tiles: (N, C, T_h, T_w) input tiles: float32 and normalized, or, with ``normalization``,
        raw in an integer dtype (uint8, int8, uint16, int16) that goes to the device as it is
        (a quarter or half of the float32 bytes)
    device: where the model runs
    precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (already resolved)
    crop: rows and columns of each tile's output that are kept
    labels: return labels (computed on the device: one byte a pixel comes back) instead of
        logits
    normalization: ``(mean, std)``, float32 (C,) each: the tiles are normalized on the device
        as ``(raw - mean[c]) / std[c]`` in float32, the same floats as
        :meth:`unet.network.checkpoint.Checkpoint.normalize` gives on the host (see
        :func:`normalized`)

    Returns
    -------
    uint8 (N, h, w) labels, or float32 (N, num_classes, h, w) logits; ``(h, w)`` is the crop.

    Holds the device's lock (:func:`unet.predict.device.device_lock`) from the copy in to the
    copy out: threads of one worker overlap their host work with one another's batches but
    never run two at once.
    """
    import torch

    from unet.predict.device import autocast, device_lock

    with device_lock(device), torch.inference_mode():
        inputs = torch.from_numpy(tiles).to(device, non_blocking=True)
        if normalization is not None:
            inputs = normalized(inputs, *normalization)
        inputs = inputs.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            return _forward_and_copy_out(model, inputs, crop, labels)


def _forward_and_copy_out(
    model: UNet, inputs: torch.Tensor, crop: tuple[slice, slice], labels: bool
) -> np.ndarray:
    outputs = forward(model, inputs)
    del inputs
    outputs = outputs[(..., *crop)]
    outputs = labels_of(outputs) if labels else outputs.float()
    return outputs.cpu().numpy()


def normalized(raw: torch.Tensor, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """float32 ``(raw - mean[c]) / std[c]`` of (N, C, H, W) ``raw`` (any real dtype), on its
    device.

    Bit for bit what numpy computes on the host: the integers convert exactly, and float32
    subtraction and division are correctly rounded on CPUs and GPUs alike. ``mean`` and ``std``
    go to the device as tensors: divided by a CPU scalar, CUDA multiplies by the reciprocal
    instead, which can differ in the last bit.
    """
    import torch

    shape = (1, -1, 1, 1)
    mean_t = torch.from_numpy(np.ascontiguousarray(mean, np.float32)).to(raw.device).view(shape)
    std_t = torch.from_numpy(np.ascontiguousarray(std, np.float32)).to(raw.device).view(shape)
    image = raw.to(torch.float32, copy=True)
    image.sub_(mean_t).div_(std_t)
    return image


def labels_of(logits: torch.Tensor) -> torch.Tensor:
    """uint8 (N, h, w) labels of (N, K, h, w) logits: argmax, or ``> 0`` when K = 1.

    For K = 2 the argmax is ``logit 1 > logit 0`` (class 0 on ties, as argmax), measured
    several times faster than ``argmax`` on a CPU.
    """
    import torch

    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).to(torch.uint8)
    if logits.shape[1] == 2:
        return (logits[:, 1] > logits[:, 0]).to(torch.uint8)
    return logits.argmax(dim=1).to(torch.uint8)


def forward(model: UNet, inputs: torch.Tensor) -> torch.Tensor:
    """``model(inputs)`` as inference runs it: on a CPU, a valid-padding model runs in bands of
    rows (:func:`unet.network.banded.banded_forward`), which gives the same logits with a fraction of the
    activation memory; on a GPU, where memory is not what limits, in one piece.

    Call it under ``torch.inference_mode`` with the model in eval mode.
    """
    if inputs.device.type == "cpu" and model.geometry.padding == "valid":
        from unet.network.banded import banded_forward

        return banded_forward(model, inputs)
    return model(inputs)


def use_channels_last(model: UNet) -> None:
    """Store the model's convolution weights channels-last (NHWC), once.

    oneDNN on CPU and cuDNN on GPU run NHWC convolutions without the layout conversions NCHW
    needs: measured well above NCHW's model throughput, in bf16 and fp32, on 2 AVX512-BF16 cores
    (benchmarks/README.md). The values and the results are unchanged (within float rounding).
    """
    import torch

    weight = model.bottom[0].weight
    if not weight.is_contiguous(memory_format=torch.channels_last):
        model.to(memory_format=torch.channels_last)
