"""Inference on arrays in memory: tiles of a window in batches, exactly as one pass would.

- :func:`predict_array`: a whole normalized ``(C, H, W)`` image, mirror-padded at its border;
- :func:`predict_window`: the output pixels of a window that is already padded (the chunk tasks);
- :func:`unet.predict.dask.predict_dask`: a normalized image in a dask array, lazily, block by block;
- :mod:`~unet.predict.step`: the device's part of a batch (copy in, forward, labels, copy out);
- :mod:`~unet.predict.device`: devices, precisions and the per-device lock.

Importing this package is cheap: torch loads when a function that needs it runs.
"""

from unet.predict.device import PRECISIONS, Precision, autocast, resolve_device, resolve_precision
from unet.predict.step import device_step, forward
from unet.predict.window import check_image, predict_array, predict_window

__all__ = [
    "PRECISIONS",
    "Precision",
    "autocast",
    "check_image",
    "device_step",
    "forward",
    "predict_array",
    "predict_window",
    "resolve_device",
    "resolve_precision",
]
