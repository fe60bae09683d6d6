"""Exact overlap-tile U-Net segmentation of huge images.

The public API::

    from unet import segment, load_checkpoint, predict_array

    report = segment("slide.zarr", "slide-mask.zarr", model="nuclei", precision="auto")
    checkpoint = load_checkpoint("nuclei")
    logits = predict_array(checkpoint.model, checkpoint.normalize(raw[None]))
    labels = predict_dask(checkpoint.model, dask_image)   # lazy, chunked like dask_image

Importing ``unet`` is cheap: torch, dask and prefect load where they are used, and the names
below load their modules on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_PUBLIC = {
    "segment": "unet.runs",
    "SegmentParameters": "unet.config",
    "SegmentReport": "unet.engine.report",
    "load_checkpoint": "unet.network.checkpoint",
    "save_checkpoint": "unet.network.checkpoint",
    "Checkpoint": "unet.network.checkpoint",
    "UNet": "unet.network.model",
    "predict_array": "unet.predict.window",
    "predict_dask": "unet.predict.dask",
    "train": "unet.training.train",
    "TrainParameters": "unet.training.config",
    "evaluate": "unet.results.evaluate",
    "export": "unet.results.export",
    "ingest": "unet.io.ingest",
}

__all__ = [
    "Checkpoint",
    "SegmentParameters",
    "SegmentReport",
    "TrainParameters",
    "UNet",
    "evaluate",
    "export",
    "ingest",
    "load_checkpoint",
    "predict_array",
    "predict_dask",
    "save_checkpoint",
    "segment",
    "train",
]

if TYPE_CHECKING:
    from unet.config import SegmentParameters
    from unet.engine.report import SegmentReport
    from unet.io.ingest import ingest
    from unet.network.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from unet.network.model import UNet
    from unet.predict.dask import predict_dask
    from unet.predict.window import predict_array
    from unet.results.evaluate import evaluate
    from unet.results.export import export
    from unet.runs import segment
    from unet.training.config import TrainParameters
    from unet.training.train import train


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'unet' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
