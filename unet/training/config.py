"""Validated training settings, stored in the checkpoint's metadata."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from unet.errors import (
    InvalidParameter,
)
from unet.predict.device import PRECISIONS, Precision
from unet.tiling import Geometry, Padding

if TYPE_CHECKING:
    pass


Optimizer = Literal["sgd", "adam"]


OPTIMIZERS = ("sgd", "adam")


#: Learning rate per optimizer when none is given.
DEFAULT_LR = {"sgd": 0.01, "adam": 1e-3}


#: Output pixels per tile side aimed at by the default training tile.
DEFAULT_TRAIN_OUTPUT = 128


@dataclass(frozen=True)
class TrainConfig:
    """Validated training settings (see :func:`train` for their meaning); stored in the
    checkpoint's metadata. ``tile_size`` and ``lr`` given as None are resolved to their
    defaults."""

    base_channels: int = 64
    depth: int = 4
    padding: Padding = "valid"
    steps: int = 1000
    batch_size: int = 4
    tile_size: int | None = None
    lr: float | None = None
    optimizer: Optimizer = "sgd"
    momentum: float = 0.99
    seed: int = 0
    precision: Precision = "fp32"
    val_fraction: float = 0.2
    val_every: int | None = None
    w0: float = 10.0
    sigma: float = 5.0
    elastic: bool = True

    def __post_init__(self) -> None:
        if self.depth < 1 or self.base_channels < 1:
            raise InvalidParameter(
                f"need depth >= 1 and base channels >= 1, got {self.depth}, {self.base_channels}"
            )
        if self.steps < 1 or self.batch_size < 1:
            raise InvalidParameter(
                f"need steps >= 1 and batch size >= 1, got {self.steps}, {self.batch_size}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise InvalidParameter(
                f"unknown optimizer {self.optimizer!r}: use one of {', '.join(OPTIMIZERS)}"
            )
        if self.precision not in PRECISIONS:
            raise InvalidParameter(
                f"unknown precision {self.precision!r}: use one of {', '.join(PRECISIONS)}"
            )
        if not 0 <= self.val_fraction < 1:
            raise InvalidParameter(f"val fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.momentum < 1:
            raise InvalidParameter(f"momentum must be in [0, 1), got {self.momentum}")
        if self.val_every is not None and self.val_every < 1:
            raise InvalidParameter(f"val every must be >= 1, got {self.val_every}")
        if self.w0 < 0 or self.sigma <= 0:
            raise InvalidParameter(f"need w0 >= 0 and sigma > 0, got {self.w0}, {self.sigma}")
        lr = DEFAULT_LR[self.optimizer] if self.lr is None else self.lr
        if not lr > 0:
            raise InvalidParameter(f"learning rate must be > 0, got {lr}")
        geometry = self.geometry
        tile_size = self.tile_size
        if tile_size is None:
            tile_size = geometry.valid_at_least(DEFAULT_TRAIN_OUTPUT + 2 * geometry.halo)
        geometry.output_size(tile_size)  # raises InvalidInputSize naming the nearest valid sides
        object.__setattr__(self, "lr", float(lr))
        object.__setattr__(self, "tile_size", int(tile_size))

    @property
    def geometry(self) -> Geometry:
        return Geometry(depth=self.depth, padding=self.padding)
