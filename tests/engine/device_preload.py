"""``dask worker --preload`` module of the tests: this worker "has a device".

Its :func:`unet.predict.device_step` is replaced, as a simulated device replaces it, by the real
step itself, so the worker streams its chunks (see ``unet.engine.task.worker_device``) and
computes exactly what the real step computes. ``STREAMED`` counts the batches it ran inside a
stream (``unet.engine.stream.run_chunk_batch``).
"""

from __future__ import annotations

import sys

STREAMED = [0]


def dask_setup(worker: object) -> None:
    import unet.predict

    real = unet.predict.device_step

    def step(*args, **kwargs):
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_name == "run_chunk_batch":
                STREAMED[0] += 1
                break
            frame = frame.f_back
        return real(*args, **kwargs)

    unet.predict.device_step = step
