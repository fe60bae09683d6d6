"""A ``dask worker --preload`` module: ``unet.predict.device_step`` becomes a device that costs
nothing (:class:`unet.bench.simulate.SimulatedDevice` at ``inf``), so that a run measures the
host's work alone: the driver's, the scheduler's and the workers'.

    dask worker tcp://127.0.0.1:8786 --nthreads 1 --preload benchmarks/instant_device.py

``UNET_SIMULATED_MPX_PER_S`` gives the device a finite speed instead (Mpx/s).
"""

from __future__ import annotations

import os


def dask_setup(worker: object) -> None:
    """Called by ``dask worker --preload`` in the worker process, before any task runs."""
    import unet.predict
    from unet.bench.simulate import SimulatedDevice, parse_speed

    speed = parse_speed(os.environ.get("UNET_SIMULATED_MPX_PER_S", "inf"))
    unet.predict.device_step = SimulatedDevice(speed)
