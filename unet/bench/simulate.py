"""A simulated accelerator: :func:`unet.predict.device_step` replaced by a wait.

The stand-in holds the device (its lock, as the real step does) for the time a device of
``mpx_per_s`` needs for the batch, ``N x h x w`` useful output pixels over the speed, and spends
that time in ``time.sleep``: no CPU and no GIL, as a GPU computing asynchronously takes none.
Everything else of a run (reading, decoding, mirroring, cutting tiles, pasting, writing, the
ledger, Dask) is real, so a run through it measures on any machine whether the host side could
keep such a device busy: ``feeder_efficiency`` = pipeline Mpx/s / device Mpx/s.

Installing it in Dask worker processes takes a worker plugin (:class:`SimulatedDevicePlugin`):
``client.register_plugin(SimulatedDevicePlugin(133.0))`` installs it in every worker, those
that start later included, and ``client.unregister_worker_plugin(PLUGIN_NAME)`` puts the real
step back. :func:`simulated_device` does the same in this process only.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from distributed import WorkerPlugin

#: The name the plugin is registered under (one simulated device per worker at a time).
PLUGIN_NAME = "unet-simulated-device"


class SimulatedDevice:
    """A stand-in for :func:`unet.predict.device_step` on a device of ``mpx_per_s``.

    Called as ``device_step`` is, it returns what the real step would, in shape and dtype:
    uint8 (N, h, w) labels or float32 (N, num_classes, h, w) logits, where ``(h, w)`` is the
    crop. Labels are the tile's pixels above the normalization's mean (or above 0 when the tiles
    come normalized), so that written masks compress as real ones do; they are computed once per
    tile shape, with the time they take counted in the batch's wait, and reused, so that a
    batch costs the host nothing. Logits are zeros.

    Parameters
    ----------
    mpx_per_s: the device's speed in useful output megapixels a second; ``math.inf`` for a
        device so fast that it costs nothing (the data path's ceiling)
    shared_lock: a file that every process simulating the same device locks (``flock``) while
        the device computes, as processes sharing one GPU take turns on it; None: this process
        has the device to itself
    """

    def __init__(self, mpx_per_s: float, shared_lock: str | None = None) -> None:
        if not mpx_per_s > 0:
            raise ValueError(f"a simulated device needs a speed > 0 Mpx/s, got {mpx_per_s}")
        self.mpx_per_s = float(mpx_per_s)
        self.shared_lock = shared_lock
        self.batches = 0
        self.pixels = 0
        self._labels: dict[tuple[int, ...], np.ndarray] = {}
        self._lock = threading.Lock()

    def __call__(
        self,
        model: Any,
        tiles: np.ndarray,
        *,
        device: Any,
        precision: str,
        crop: tuple[slice, slice],
        labels: bool,
        normalization: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        from unet.predict.device import device_lock

        height, width = (
            _length(part, side) for part, side in zip(crop, tiles.shape[-2:], strict=True)
        )
        pixels = tiles.shape[0] * height * width
        with device_lock(device), _process_lock(self.shared_lock):
            began = time.perf_counter()
            if labels:
                outputs = self._labels_like(tiles, crop, normalization)
            else:
                outputs = np.zeros(
                    (tiles.shape[0], model.num_classes, height, width), dtype=np.float32
                )
            wait = pixels / (self.mpx_per_s * 1e6) - (time.perf_counter() - began)
            if wait > 0:
                time.sleep(wait)
            with self._lock:
                self.batches += 1
                self.pixels += pixels
        return outputs

    def _labels_like(
        self,
        tiles: np.ndarray,
        crop: tuple[slice, slice],
        normalization: tuple[np.ndarray, np.ndarray] | None,
    ) -> np.ndarray:
        key = tiles.shape
        with self._lock:
            known = self._labels.get(key)
        if known is None:
            threshold = 0.0 if normalization is None else float(normalization[0][0])
            known = (tiles[:, 0][(slice(None), *crop)] > threshold).astype(np.uint8)
            known.flags.writeable = False
            with self._lock:
                self._labels[key] = known
        return known


@contextlib.contextmanager
def _process_lock(path: str | None) -> Iterator[None]:
    """Hold an exclusive ``flock`` of ``path`` (nothing when None) while inside."""
    if path is None:
        yield
        return
    import fcntl
    import os

    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _length(part: slice, side: int) -> int:
    return len(range(*part.indices(side)))


class SimulatedDevicePlugin(WorkerPlugin):
    """Installs :class:`SimulatedDevice` as ``unet.predict.device_step`` in a Dask worker's
    process (and puts the real step back on teardown)."""

    name = PLUGIN_NAME

    def __init__(self, mpx_per_s: float, shared_lock: str | None = None) -> None:
        self.mpx_per_s = mpx_per_s
        self.shared_lock = shared_lock
        self._real = None

    def setup(self, worker: Any) -> None:
        """``shared_lock``: a path prefix; the worker's device is the GPU its
        ``CUDA_VISIBLE_DEVICES`` names, and workers pinned to the same one share its lock file
        (``PREFIX-N``), so that several processes per GPU take turns on one simulated device."""
        import os

        import unet.predict

        lock = None
        if self.shared_lock is not None:
            lock = f"{self.shared_lock}-{os.environ.get('CUDA_VISIBLE_DEVICES', '0')}"
        self._real = unet.predict.device_step
        unet.predict.device_step = SimulatedDevice(self.mpx_per_s, lock)

    def teardown(self, worker: Any) -> None:
        import unet.predict

        if self._real is not None:
            unet.predict.device_step = self._real


@contextlib.contextmanager
def simulated_device(mpx_per_s: float) -> Iterator[SimulatedDevice]:
    """:class:`SimulatedDevice` as ``unet.predict.device_step`` in this process while inside."""
    import unet.predict

    real = unet.predict.device_step
    stand_in = SimulatedDevice(mpx_per_s)
    unet.predict.device_step = stand_in
    try:
        yield stand_in
    finally:
        unet.predict.device_step = real


def parse_speed(text: str) -> float:
    """``"133"`` -> 133.0; ``"inf"`` -> ``math.inf`` (a device that costs nothing)."""
    speed = float(text)
    if math.isnan(speed) or speed <= 0:
        raise ValueError(f"a simulated device needs a speed > 0 Mpx/s or inf, got {text!r}")
    return speed
