"""Training the paper's way.

Data: ``DATA_DIR/images`` and ``DATA_DIR/masks`` hold images and integer label masks with
matching names (TIFF, PNG or Zarr; 0 = background). Masks may hold instance ids: every object is
then class 1 (foreground) unless a class map assigns mask values to classes.

A mask value given as ``ignore_label`` marks unannotated pixels: they add nothing to the loss,
the weight map or the validation score, and tiles are drawn only where there are annotations
(:mod:`unet.training.sampler`). Zarr images are whole slides, read window by window
(:mod:`unet.training.slides`).

Per image, once (per window for slides): the weight map
``w_c + w0 * exp(-(d1 + d2)**2 / (2 sigma**2))`` (:mod:`unet.training.weightmap`). Per step:
``batch_size`` valid-size input tiles around random annotated pixels, cut from the image
mirror-padded exactly as inference pads it (numpy ``"reflect"``, see
:func:`unet.tiling.mirror_pad`), elastically deformed, flipped and rotated with their labels and
weights (:mod:`unet.training.augment`); the loss is the weighted cross entropy over the
output-size centre. SGD with momentum 0.99 as in the paper (Adam optional), He-initialised
weights, or the weights of an initial checkpoint (``init``: fine-tuning). Mean and std per channel
come from the annotated pixels of the training images (or the initial checkpoint) and go into the
checkpoint, with how the model was trained.

Everything random derives from ``seed``: on the CPU two runs with one seed and one thread count
give identical weights, and so does a run interrupted and resumed from its saved state
(:mod:`unet.training.state`). A plot of loss and validation Dice goes beside the checkpoint
(:mod:`unet.training.plot`).
"""

from __future__ import annotations

import contextlib
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
from unet.errors import ChannelMismatch, InvalidParameter, OutputExists, UNetError
from unet.predict.device import Precision
from unet.results.evaluate import confusion_matrix, dice_iou
from unet.training.config import TrainParameters
from unet.training.data import LabelledImage, TrainingItem, load_dataset, split
from unet.training.plot import plot_path, write_training_plot
from unet.training.sampler import TileSampler
from unet.training.state import Progress, load_state, save_state, state_path
from unet.training.statistics import PixelStatistics
from unet.training.weightmap import IGNORED

if TYPE_CHECKING:
    import torch

    from unet.network.checkpoint import Checkpoint
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
    steps: optimizer steps of the whole run
    seconds: wall time of the training loop, over every resumed part
    plot: the PNG of loss and validation Dice written beside the checkpoint
    resumed: steps at which an interrupted run was resumed (empty when it ran through)
    losses: training loss of every step
    """

    path: Path
    final_loss: float
    val_dice: float | None
    steps: int
    seconds: float
    plot: Path
    resumed: list[int] = field(repr=False)
    losses: list[float] = field(repr=False)
    train_images: list[str] = field(repr=False)
    val_images: list[str] = field(repr=False)


#: Windows per held-out slide on which validation Dice is measured.
VAL_WINDOWS = 16


def train(
    data_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    parameters: TrainParameters | None = None,
    *,
    progress: bool = True,
    **options: Any,
) -> TrainResult:
    """Train a U-Net on a data directory (or fine-tune one) and save it as a checkpoint.

    Parameters
    ----------
    data_dir: directory with ``images/`` and ``masks/`` (matching stems; TIFF, PNG or Zarr; a
        Zarr image may hold its mask as ``labels/<name>``), or one such Zarr image
    out: checkpoint file to write (``.safetensors``); the plot goes to ``out`` with suffix
        ``.png`` and the state of an unfinished run to ``<out>.state``
    parameters: the settings (:class:`~unet.training.config.TrainParameters`); or give its fields
        as keywords (``steps=300, depth=3, ...``)
    progress: show a progress bar (rich, on stderr) with loss and validation Dice

    Everything random derives from ``seed``: on the CPU two runs with one seed and one thread
    count give identical weights, and so does a run interrupted and resumed by the same call
    (``CKPT.state`` is saved every ``save_every`` steps). The validation split holds out
    ``round(n * val_fraction)`` images (at least one when > 0 and there are two or more); a
    held-out slide is scored on :data:`VAL_WINDOWS` windows drawn where it is annotated.

    With ``init`` the run starts from that checkpoint's weights, architecture, classes and (unless
    ``renormalize``) normalization; otherwise from He-initialised weights and the mean and std
    of the training images' annotated pixels.

    Raises
    ------
    InputNotFound, UnsupportedInput, InvalidImage
        Bad data, before training starts (missing folders, unmatched names, shapes that differ,
        masks that are not integer labels, no annotated object at all).
    InvalidParameter, InvalidInputSize, OutputExists, CheckpointError, ChannelMismatch
        Bad options, or data that does not fit the initial checkpoint.
    FingerprintMismatch
        ``<out>.state`` holds an unfinished run with other settings (``resume=False`` starts over).
    """
    import torch

    from unet.network.checkpoint import save_checkpoint
    from unet.predict.device import resolve_device
    from unet.predict.step import use_channels_last

    if parameters is None:
        parameters = validated(TrainParameters, options)
    elif options:
        # Only what was given: defaults (such as the architecture) resolve again with the options.
        given = parameters.model_dump(exclude_unset=True)
        parameters = validated(TrainParameters, {**given, **options})
    config = parameters
    out = Path(out)
    _check_outputs(out, Path(data_dir), config)
    if out.exists() and not config.overwrite:
        raise OutputExists(f"{out} exists: choose another path or pass --overwrite")
    initial = None
    if config.init is not None:
        from unet.network.checkpoint import load_checkpoint

        initial = load_checkpoint(config.init)
        config = config.with_architecture(initial.model.config, config.init)
    dataset = load_dataset(
        data_dir,
        class_map=config.class_map,
        ignore_label=config.ignore_label,
        label_name=config.label_name,
        w0=config.w0,
        sigma=config.sigma,
    )
    num_classes, class_names = _classes(dataset, config, initial)
    training, validation = split(dataset, config.val_fraction, config.seed)
    statistics = PixelStatistics(dataset[0].channels)
    for item in training:
        statistics.merge(item.statistics())
    if initial is not None and not config.renormalize:
        mean, std = initial.mean, initial.std
    else:
        mean, std = statistics.normalization()
    for item in dataset:
        item.mean, item.std = mean, std

    torch_device = resolve_device(config.device)
    check_memory(config, dataset[0].channels, num_classes, torch_device)
    model = _initial_model(config, dataset[0].channels, num_classes, initial)
    model.to(torch_device)
    # Channels-last from the start: faster on CPU and GPU, and validation (which converts the
    # model) then leaves the layout as it was, so a resumed run computes what an unbroken one does.
    use_channels_last(model)
    optimiser = _optimiser(model, config)
    scaler = torch.amp.GradScaler(torch_device.type, enabled=config.precision == "fp16")
    sampler = TileSampler(
        training,
        config.geometry,
        config.tile_size,
        np.random.default_rng([config.seed, 2]),
        config.elastic,
    )
    checks = _validation_set(validation, sampler, config.seed)
    val_every = config.val_every or max(config.steps // 10, 1)
    save_every = config.save_every or val_every

    state_file = state_path(out)
    fingerprint = _fingerprint(config, dataset, initial)
    run = Progress()
    if state_file.exists() and config.resume:
        run, rng_state = load_state(state_file, fingerprint, model, optimiser, scaler)
        sampler.rng.bit_generator.state = rng_state
        run.resumed.append(run.step)
    plot = plot_path(out)
    started = time.perf_counter() - run.seconds
    with _progress_bar(progress, config.steps, run.step) as update:
        for step in range(run.step + 1, config.steps + 1):
            loss = _step(model, optimiser, scaler, sampler, config, torch_device)
            run.losses.append(loss)
            if not math.isfinite(loss):
                raise InvalidParameter(
                    f"the loss became {loss} at step {step}: lower the learning rate "
                    f"(now {config.lr})"
                )
            val_dice = run.history["val_dice"][-1] if run.history["val_dice"] else None
            if checks and (step % val_every == 0 or step == config.steps):
                val_dice = validate(model, checks, torch_device, config.precision)
                run.history["step"].append(step)
                run.history["val_dice"].append(val_dice)
            run.step = step
            if step % save_every == 0 and step < config.steps:
                run.seconds = time.perf_counter() - started
                save_state(
                    state_file,
                    fingerprint,
                    run,
                    model,
                    optimiser,
                    scaler,
                    sampler.rng.bit_generator.state,
                )
                _plot(plot, run, config.steps)
            update(step, loss, val_dice)
    seconds = time.perf_counter() - started

    final_loss = float(np.mean(run.losses[-max(config.steps // 10, 1) :]))
    val_dice = run.history["val_dice"][-1] if run.history["val_dice"] else None
    train_names = [item.name for item in training]
    val_names = [item.name for item in validation]
    save_checkpoint(
        out,
        model,
        mean=mean,
        std=std,
        class_names=class_names,
        trainer="unet.train",
        **config.recorded(),
        init_digest=initial.digest if initial is not None else None,
        data=str(data_dir),
        train_images=train_names,
        val_images=val_names,
        annotated_pixels=int(sum(item.class_counts.sum() for item in training)),
        input_dtype=statistics.dtype,
        input_range=statistics.value_range,
        final_loss=final_loss,
        val_dice=val_dice,
        history=run.history,
        resumed=run.resumed,
        seconds=round(seconds, 1),
    )
    _plot(plot, run, config.steps)
    state_file.unlink(missing_ok=True)
    return TrainResult(
        path=out,
        final_loss=final_loss,
        val_dice=val_dice,
        steps=config.steps,
        seconds=seconds,
        plot=plot,
        resumed=run.resumed,
        losses=run.losses,
        train_images=train_names,
        val_images=val_names,
    )


def _step(
    model: UNet,
    optimiser: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    sampler: TileSampler,
    config: TrainParameters,
    device: torch.device,
) -> float:
    """One optimizer step on a fresh batch; returns its loss."""
    import torch

    from unet.predict.device import autocast

    model.train()
    images, targets, weights = (
        torch.from_numpy(a).to(device) for a in sampler.batch(config.batch_size)
    )
    with autocast(device, config.precision):
        logits = model(images)
    loss = weighted_cross_entropy(logits.float(), targets, weights)
    optimiser.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimiser)
    scaler.update()
    return float(loss.detach())


def _classes(
    dataset: list[TrainingItem], config: TrainParameters, initial: Checkpoint | None
) -> tuple[int, list[str] | None]:
    """The number of classes and their names: from the data (and class map), or from the
    initial checkpoint, which must cover the data's classes."""
    found = max(item.class_counts.size for item in dataset)
    num_classes = max(found, 2)
    if config.class_map:
        num_classes = max(num_classes, max(config.class_map.values()) + 1)
    names = config.class_names
    if initial is not None:
        model_classes = initial.model.num_classes
        channels = dataset[0].channels
        if channels != initial.model.in_channels:
            raise ChannelMismatch(
                f"the training images have {channels} channels but the initial model "
                f"{config.init} takes {initial.model.in_channels}: fine-tune a model made for "
                "such images, or train from scratch without --init"
            )
        if model_classes < 2 or num_classes > model_classes:
            raise InvalidParameter(
                f"the masks hold {num_classes} classes but the initial model {config.init} "
                f"predicts {model_classes} ({', '.join(initial.class_names)}): map the mask "
                "values onto its classes with --class-map, or train from scratch without --init"
            )
        num_classes = model_classes
        names = names or initial.class_names
    if names is not None and len(names) != num_classes:
        raise InvalidParameter(
            f"{len(names)} class names given for {num_classes} classes: give {num_classes}"
        )
    return num_classes, names


def _initial_model(
    config: TrainParameters, channels: int, num_classes: int, initial: Checkpoint | None
) -> UNet:
    """The initial checkpoint's model in training mode, or a He-initialised one from ``seed``."""
    import torch

    from unet.network.model import UNet

    if initial is not None:
        return initial.model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = UNet(channels, num_classes, config.base_channels, config.depth, config.padding)
        _he_init(model)
    return model


def _fingerprint(
    config: TrainParameters, dataset: list[TrainingItem], initial: Checkpoint | None
) -> dict[str, Any]:
    """What must match for a saved state to be resumed (JSON round-trip safe)."""
    import json

    document = {
        **config.recorded(),
        "data": [[item.name, *item.shape, _content(item)] for item in dataset],
        "init_digest": initial.digest if initial is not None else None,
    }
    return json.loads(json.dumps(document))


def _content(item: TrainingItem) -> str:
    """What changes when an item's pixels or annotations change, so that a state saved before a
    correction is not resumed with the corrected data: the SHA-256 of an image and its classes
    read whole; for a slide, the change markers of its image and mask stores and its annotated
    pixels per class (its pixels are never read whole)."""
    import hashlib

    digest = hashlib.sha256()
    if isinstance(item, LabelledImage):
        for array in (item.image, item.classes):
            digest.update(str((array.dtype, array.shape)).encode())
            digest.update(np.ascontiguousarray(array).data)
    else:
        marker = [item.image.identity(), item.mask.identity(), item.class_counts.tolist()]
        digest.update(repr(marker).encode())
    return digest.hexdigest()


def _validation_set(
    validation: list[TrainingItem], sampler: TileSampler, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Normalized images and classes to score: whole in-memory images, windows of slides."""
    checks = []
    for index, item in enumerate(validation):
        if isinstance(item, LabelledImage):
            checks.append((item.normalize(item.image), item.classes))
        else:
            checks.extend(sampler.fixed_windows(item, VAL_WINDOWS, seed=[seed, 3, index]))
    return checks


def check_memory(config: TrainParameters, channels: int, num_classes: int, device: Any) -> None:
    """Refuse, before the network is built, a training run whose weights, gradients, optimizer
    state and one step's feature maps alone need more memory than ``device`` has free.

    The estimate is a lower bound (4 copies of the parameters, and the feature maps that a
    step keeps for its backward pass, :func:`unet.network.model.activation_count`), so a run
    that is refused could not have fitted.

    Raises
    ------
    InvalidParameter: naming the bytes needed and free, and what to lower
    """
    from unet.network.model import activation_count, parameter_count

    architecture = (channels, num_classes, config.base_channels, config.depth, config.padding)
    parameters = parameter_count(*architecture)
    activations = config.batch_size * activation_count(*architecture, config.tile_size)
    value_bytes = 4 if config.precision == "fp32" else 2
    needed = 4 * 4 * parameters + value_bytes * activations
    free = _free_memory(device)
    if needed > free:
        raise InvalidParameter(
            f"training this network needs at least {_gib(needed)} ({parameters:,} parameters; "
            f"{config.batch_size} tile(s) of {config.tile_size}x{config.tile_size} px) but "
            f"{device} has {_gib(free)} free: lower --base-channels "
            f"({config.base_channels}), --depth ({config.depth}), --tile-size or --batch-size"
        )


def _free_memory(device: Any) -> int:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def _gib(size: int) -> str:
    return f"{size / 2**30:,.1f} GiB"


def _check_outputs(out: Path, data_dir: Path, config: TrainParameters) -> None:
    """Refuse, before anything is read or written, a checkpoint, plot or state file that would
    replace the training data, the initial checkpoint, or a file of another format
    (:mod:`unet.io.replace`)."""
    from unet.io.replace import check_apart, check_replaceable

    folders = [data_dir / name for name in ("images", "masks") if (data_dir / name).is_dir()]
    # The data folder may hold the checkpoint beside images/ and masks/; a slide may not.
    inputs: list[Path] = folders or [data_dir]
    around = [data_dir] if folders else []
    if config.init is not None:
        from unet.network.checkpoint import resolve_checkpoint

        with contextlib.suppress(UNetError):  # a missing one is refused when it is loaded
            inputs.append(resolve_checkpoint(config.init))
    plot, state = plot_path(out), state_path(out)
    for path, kind, what in (
        (out, "safetensors", "checkpoint"),
        (plot, "png", "plot"),
        (state, "safetensors", "training state"),
    ):
        check_apart(path, inputs, what=what)
        check_apart(path, around, what=what, inside_allowed=True)
        check_replaceable(path, kind, what=what)
    if plot.exists() and not (out.exists() or state.exists()):
        # A plot is written with the state or the checkpoint: without either, it is not ours.
        raise OutputExists(
            f"plot {plot} (the checkpoint's name with .png) exists and no earlier run of "
            f"{out} wrote it: move it away or choose another --out"
        )


def _plot(path: Path, run: Progress, total_steps: int) -> None:
    write_training_plot(path, run.losses, run.history["step"], run.history["val_dice"], total_steps)


def weighted_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """``sum w(x) * -log p_{l(x)}(x)`` over the annotated pixels, divided by their number.

    logits: float (N, K, H, W); targets: int64 (N, H, W), :data:`IGNORED` where unannotated;
    weights: float (N, H, W). Unannotated pixels add nothing, whatever their logits, and their
    gradient is zero; fully annotated batches give the mean over all pixels.
    """
    import torch.nn.functional as F

    annotated = targets != IGNORED
    per_pixel = F.cross_entropy(logits, targets, reduction="none", ignore_index=IGNORED)
    return (per_pixel * weights).sum() / annotated.sum().clamp(min=1)


def validate(
    model: UNet,
    checks: list[tuple[np.ndarray, np.ndarray]],
    device: torch.device,
    precision: Precision,
) -> float | None:
    """Mean foreground Dice of ``model`` over its annotated pixels, pooled over ``checks``.

    checks: pairs of a normalized float32 (C, h, w) image and its int64 classes, either
    (h, w) (a whole image, predicted as inference does) or the output-size centre of an input
    window (predicted by one forward pass).
    """
    import torch

    from unet.predict.device import autocast
    from unet.predict.window import predict_array

    num_classes = max(model.num_classes, 2)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    model.eval()
    for image, classes in checks:
        if image.shape[1:] == classes.shape:
            logits = predict_array(model, image, device=str(device), precision=precision)
        else:
            with torch.no_grad(), autocast(device, precision):
                tensor = torch.from_numpy(np.ascontiguousarray(image[None])).to(device)
                logits = model(tensor)[0].float().cpu().numpy()
        annotated = classes != IGNORED
        confusion += confusion_matrix(
            logits.argmax(axis=0)[annotated], classes[annotated], num_classes
        )
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
def _progress_bar(enabled: bool, steps: int, done: int = 0) -> Iterator:
    """Yields ``update(step, loss, val_dice)``; draws a rich bar on stderr when enabled, starting
    at ``done`` steps."""
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
        task = bar.add_task("train", total=steps, completed=done, loss="-", dice="-")

        def update(step: int, loss: float, dice: float | None) -> None:
            shown = "-" if dice is None else f"{dice:.3f}"
            bar.update(task, completed=step, loss=f"{loss:.4f}", dice=shown)

        yield update
