"""Training the paper's way.

Data: ``DATA_DIR/images`` and ``DATA_DIR/masks`` hold images and integer label masks with
matching names (TIFF, PNG or Zarr; 0 = background). Masks may hold instance ids: every object is
then class 1 (foreground) unless a class map assigns mask values to classes.

Per image, once: the weight map ``w_c + w0 * exp(-(d1 + d2)**2 / (2 sigma**2))``
(:mod:`unet.training.weightmap`). Per step: ``batch_size`` valid-size input tiles at random places, cut
from the image mirror-padded exactly as inference pads it (numpy ``"reflect"``, see
:func:`unet.tiling.mirror_pad`), elastically deformed, flipped and rotated with their labels and
weights (:mod:`unet.training.augment`); the loss is the weighted cross entropy over the output-size centre.
SGD with momentum 0.99 as in the paper (Adam optional), He-initialised weights. Mean and std
per channel come from the training images and go into the checkpoint.

Everything random derives from ``seed``: on the CPU two runs with one seed and one thread count
give identical weights.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unet.config import validated
from unet.errors import (
    InvalidParameter,
    OutputExists,
)
from unet.predict.device import Precision
from unet.results.evaluate import confusion_matrix, dice_iou
from unet.training.config import TrainParameters
from unet.training.data import (
    LabelledImage,
    TileSampler,
    load_dataset,
    normalization,
    split,
)

if TYPE_CHECKING:
    import torch

    from unet.network.model import UNet


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced.

    Attributes
    ----------
    path: the checkpoint written
    final_loss: mean training loss over the last tenth of the steps (at least one step)
    val_dice: mean foreground Dice of the final model on the validation images (None without
        validation images)
    losses: training loss of every step
    seconds: wall time of the training loop
    """

    path: Path
    final_loss: float
    val_dice: float | None
    steps: int
    seconds: float
    losses: list[float] = field(repr=False)
    train_images: list[str] = field(repr=False)
    val_images: list[str] = field(repr=False)


def train(
    data_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    parameters: TrainParameters | None = None,
    *,
    progress: bool = True,
    **options: Any,
) -> TrainResult:
    """Train a U-Net on a data directory and save it as a checkpoint.

    Parameters
    ----------
    data_dir: directory with ``images/`` and ``masks/`` (matching stems; TIFF, PNG or Zarr)
    out: checkpoint file to write (``.safetensors``)
    parameters: the settings (:class:`~unet.training.config.TrainParameters`); or give its fields
        as keywords (``steps=300, depth=3, ...``)
    progress: show a progress bar (rich, on stderr) with loss and validation Dice

    Everything random derives from ``seed``: on the CPU two runs with one seed and one thread
    count give identical weights. The validation split holds out ``round(n * val_fraction)``
    images (at least one when > 0 and there are two or more).

    Raises
    ------
    InputNotFound, UnsupportedInput, InvalidImage
        Bad data, before training starts (missing folders, unmatched names, shapes that differ,
        masks that are not integer labels, no foreground at all).
    InvalidParameter, InvalidInputSize, OutputExists
        Bad options.
    """
    import torch

    from unet.network.checkpoint import save_checkpoint
    from unet.network.model import UNet
    from unet.predict.device import autocast, resolve_device

    if parameters is None:
        parameters = validated(TrainParameters, options)
    elif options:
        parameters = validated(TrainParameters, {**parameters.model_dump(), **options})
    config = parameters
    out = Path(out)
    if out.exists() and not config.overwrite:
        raise OutputExists(f"{out} exists: choose another path or pass --overwrite")
    mapping, class_names = config.class_map, config.class_names
    dataset = load_dataset(data_dir, class_map=mapping, w0=config.w0, sigma=config.sigma)
    num_classes = max(max(int(item.classes.max()) for item in dataset) + 1, 2)
    if mapping:
        num_classes = max(num_classes, max(mapping.values()) + 1)
    if class_names is not None and len(class_names) != num_classes:
        raise InvalidParameter(
            f"{len(class_names)} class names given for {num_classes} classes: give {num_classes}"
        )
    training, validation = split(dataset, config.val_fraction, config.seed)
    mean, std = normalization([item.image for item in training])
    # Recorded so that segmenting an image on another scale is refused (unet.engine.valuerange).
    input_range = [
        float(min(i.image.min() for i in training)),
        float(max(i.image.max() for i in training)),
    ]
    for item in dataset:
        item.image = ((item.image - mean[:, None, None]) / std[:, None, None]).astype(np.float32)

    torch_device = resolve_device(config.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = UNet(
            dataset[0].image.shape[0],
            num_classes,
            config.base_channels,
            config.depth,
            config.padding,
        )
        _he_init(model)
    model.to(torch_device)
    optimiser = _optimiser(model, config)
    scaler = torch.amp.GradScaler(torch_device.type, enabled=config.precision == "fp16")
    sampler = TileSampler(
        training,
        config.geometry,
        config.tile_size,
        np.random.default_rng([config.seed, 2]),
        config.elastic,
    )
    val_every = config.val_every or max(config.steps // 10, 1)

    losses: list[float] = []
    val_dice: float | None = None
    started = time.perf_counter()
    with _progress_bar(progress, config.steps) as update:
        for step in range(1, config.steps + 1):
            model.train()
            images, targets, weights = (
                torch.from_numpy(a).to(torch_device) for a in sampler.batch(config.batch_size)
            )
            with autocast(torch_device, config.precision):
                logits = model(images)
            loss = weighted_cross_entropy(logits.float(), targets, weights)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                raise InvalidParameter(
                    f"the loss became {losses[-1]} at step {step}: lower the learning rate "
                    f"(now {config.lr})"
                )
            if validation and (step % val_every == 0 or step == config.steps):
                val_dice = validate(model, validation, torch_device, config.precision)
            update(step, losses[-1], val_dice)
    seconds = time.perf_counter() - started

    final_loss = float(np.mean(losses[-max(config.steps // 10, 1) :]))
    train_names = [item.name for item in training]
    val_names = [item.name for item in validation]
    save_checkpoint(
        out,
        model,
        mean=mean,
        std=std,
        class_names=class_names,
        trainer="unet.train",
        input_range=input_range,
        **config.recorded(),
        train_images=train_names,
        val_images=val_names,
        final_loss=final_loss,
        val_dice=val_dice,
        seconds=round(seconds, 1),
    )
    return TrainResult(
        path=out,
        final_loss=final_loss,
        val_dice=val_dice,
        steps=config.steps,
        seconds=seconds,
        losses=losses,
        train_images=train_names,
        val_images=val_names,
    )


def weighted_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Mean over pixels of ``w(x) * -log p_{l(x)}(x)``.

    logits: float (N, K, H, W); targets: int64 (N, H, W); weights: float (N, H, W)
    """
    import torch.nn.functional as F

    return (F.cross_entropy(logits, targets, reduction="none") * weights).mean()


def validate(
    model: UNet, images: list[LabelledImage], device: torch.device, precision: Precision
) -> float | None:
    """Mean foreground Dice of ``model`` on whole (normalized) images, pixels pooled."""
    from unet.predict.window import predict_array

    num_classes = max(model.num_classes, 2)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for item in images:
        logits = predict_array(model, item.image, device=str(device), precision=precision)
        confusion += confusion_matrix(logits.argmax(axis=0), item.classes, num_classes)
    dice = [d for d in dice_iou(confusion)[0][1:] if d is not None]
    return float(np.mean(dice)) if dice else None


def _he_init(model: UNet) -> None:
    """The paper's initialisation: Gaussian weights of std sqrt(2 / fan-in), zero biases."""
    import torch
    from torch import nn

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)


def _optimiser(model: UNet, config: TrainParameters) -> torch.optim.Optimizer:
    import torch

    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)


@contextmanager
def _progress_bar(enabled: bool, steps: int) -> Iterator:
    """Yields ``update(step, loss, val_dice)``; draws a rich bar on stderr when enabled."""
    if not enabled:
        yield lambda step, loss, dice: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  val dice {task.fields[dice]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("train", total=steps, loss="-", dice="-")

        def update(step: int, loss: float, dice: float | None) -> None:
            shown = "-" if dice is None else f"{dice:.3f}"
            bar.update(task, completed=step, loss=f"{loss:.4f}", dice=shown)

        yield update
