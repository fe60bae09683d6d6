"""Training the paper's way.

Data: ``DATA_DIR/images`` and ``DATA_DIR/masks`` hold images and integer label masks with
matching names (TIFF, PNG or Zarr; 0 = background). Masks may hold instance ids: every object is
then class 1 (foreground) unless a class map assigns mask values to classes.

Per image, once: the weight map ``w_c + w0 * exp(-(d1 + d2)**2 / (2 sigma**2))``
(:mod:`unet.weightmap`). Per step: ``batch_size`` valid-size input tiles at random places, cut
from the image mirror-padded exactly as inference pads it (numpy ``"reflect"``, see
:func:`unet.tiling.mirror_pad`), elastically deformed, flipped and rotated with their labels and
weights (:mod:`unet.augment`); the loss is the weighted cross entropy over the output-size centre.
SGD with momentum 0.99 as in the paper (Adam optional), He-initialised weights. Mean and std
per channel come from the training images and go into the checkpoint.

Everything random derives from ``seed``: on the CPU two runs with one seed and one thread count
give identical weights.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from unet.augment import augment
from unet.errors import (
    InputNotFound,
    InvalidImage,
    InvalidParameter,
    OutputExists,
    UnsupportedInput,
)
from unet.evaluate import SUFFIXES, confusion_matrix, dice_iou, file_stem, read_array
from unet.predict import PRECISIONS, Precision
from unet.tiling import Geometry, Padding, reflect_index
from unet.weightmap import weight_map

if TYPE_CHECKING:
    import torch

    from unet.model import UNet

Optimizer = Literal["sgd", "adam"]
OPTIMIZERS = ("sgd", "adam")
#: Learning rate per optimizer when none is given.
DEFAULT_LR = {"sgd": 0.01, "adam": 1e-3}
#: Output pixels per tile side aimed at by the default training tile.
DEFAULT_TRAIN_OUTPUT = 128


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


@dataclass
class LabelledImage:
    """One training image in memory.

    Attributes
    ----------
    name: file stem
    image: float32 (C, H, W), raw values (not normalized)
    classes: int64 (H, W) class index per pixel
    weights: float32 (H, W) loss weights (:func:`unet.weightmap.weight_map`)
    """

    name: str
    image: np.ndarray
    classes: np.ndarray
    weights: np.ndarray


def train(
    data_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    base_channels: int = 64,
    depth: int = 4,
    steps: int = 1000,
    batch_size: int = 4,
    tile_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    precision: Precision = "fp32",
    val_fraction: float = 0.2,
    optimizer: Optimizer = "sgd",
    momentum: float = 0.99,
    class_map: str | Mapping[int, int] | None = None,
    class_names: list[str] | None = None,
    padding: Padding = "valid",
    w0: float = 10.0,
    sigma: float = 5.0,
    elastic: bool = True,
    val_every: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train a U-Net on a data directory and save it as a checkpoint.

    Parameters
    ----------
    data_dir: directory with ``images/`` and ``masks/`` (matching stems; TIFF, PNG or Zarr)
    out: checkpoint file to write (``.safetensors``)
    base_channels, depth, padding: architecture (64, 4, "valid" in the paper)
    steps: optimisation steps
    batch_size: tiles per step
    tile_size: input tile side, a valid size for the architecture; default the smallest valid
        side giving at least 128 output pixels
    lr: learning rate; default 0.01 for SGD, 0.001 for Adam
    seed: seeds weights, validation split, tile positions and augmentation
    device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``
    precision: ``fp32``, or ``bf16``/``fp16`` autocast
    val_fraction: share of the images held out for validation (at least one image when > 0
        and there are two or more)
    optimizer: ``sgd`` (momentum ``momentum``, 0.99 in the paper) or ``adam``
    class_map: mask value -> class, as a mapping or text ``"1:1,2:1,3:2"``; default every
        non-zero value is class 1
    class_names: one name per class, stored in the checkpoint
    w0, sigma: the weight map's border term
    elastic: elastic deformations (flips and rotations always apply)
    val_every: steps between validations shown in the progress bar; default a tenth of the run
    overwrite: replace an existing ``out``
    progress: show a progress bar (rich, on stderr) with loss and validation Dice

    Raises
    ------
    InputNotFound, UnsupportedInput, InvalidImage
        Bad data, before training starts (missing folders, unmatched names, shapes that differ,
        masks that are not integer labels, no foreground at all).
    InvalidParameter, InvalidInputSize, OutputExists
        Bad options.
    """
    import torch

    from unet.checkpoint import save_checkpoint
    from unet.model import UNet
    from unet.predict import autocast, resolve_device

    config = TrainConfig(
        base_channels=base_channels,
        depth=depth,
        padding=padding,
        steps=steps,
        batch_size=batch_size,
        tile_size=tile_size,
        lr=lr,
        optimizer=optimizer,
        momentum=momentum,
        seed=seed,
        precision=precision,
        val_fraction=val_fraction,
        val_every=val_every,
        w0=w0,
        sigma=sigma,
        elastic=elastic,
    )
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExists(f"{out} exists: choose another path or pass --overwrite")
    mapping = parse_class_map(class_map) if isinstance(class_map, str) else class_map
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
    for item in dataset:
        item.image = ((item.image - mean[:, None, None]) / std[:, None, None]).astype(np.float32)

    torch_device = resolve_device(device)
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
        **asdict(config),
        class_map=sorted(mapping.items()) if mapping else None,
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
    from unet.predict import predict_array

    num_classes = max(model.num_classes, 2)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for item in images:
        logits = predict_array(model, item.image, device=str(device), precision=precision)
        confusion += confusion_matrix(logits.argmax(axis=0), item.classes, num_classes)
    dice = [d for d in dice_iou(confusion)[0][1:] if d is not None]
    return float(np.mean(dice)) if dice else None


class TileSampler:
    """Random training tiles: input windows of the mirror-padded image and the classes and
    weights of their output-size centres.

    An image is chosen with probability proportional to its area, the output window uniformly
    among positions inside the image (or at the origin for images smaller than it). Input
    windows reach ``halo`` pixels beyond it, mirrored at the image border with numpy "reflect",
    as :func:`unet.predict.predict_array` pads.
    """

    def __init__(
        self,
        images: list[LabelledImage],
        geometry: Geometry,
        tile_size: int,
        rng: np.random.Generator,
        elastic: bool = True,
    ) -> None:
        self.images = images
        self.halo = geometry.halo
        self.tile_size = tile_size
        self.output_size = geometry.output_size(tile_size)
        self.rng = rng
        self.elastic = elastic
        areas = np.array([item.classes.size for item in images], np.float64)
        self.probabilities = areas / areas.sum()

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """float32 (N, C, T, T) images, int64 (N, O, O) classes, float32 (N, O, O) weights."""
        samples = [self.sample() for _ in range(size)]
        return tuple(np.stack(parts) for parts in zip(*samples, strict=True))

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One augmented tile: (C, T, T) image, (O, O) classes and weights."""
        item = self.images[self.rng.choice(len(self.images), p=self.probabilities)]
        height, width = item.classes.shape
        top = int(self.rng.integers(max(height - self.output_size, 0) + 1))
        left = int(self.rng.integers(max(width - self.output_size, 0) + 1))
        image, classes, weights = augment(
            *self.window(item, top, left), rng=self.rng, elastic=self.elastic
        )
        centre = slice(self.halo, self.halo + self.output_size)
        return image, classes[centre, centre], weights[centre, centre]

    def window(
        self, item: LabelledImage, top: int, left: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The input window whose output starts at image pixel (top, left): image, classes and
        weights of the image mirror-padded by ``halo``, each (.., T, T)."""
        height, width = item.classes.shape
        rows = reflect_index(top - self.halo, top - self.halo + self.tile_size, height)[:, None]
        cols = reflect_index(left - self.halo, left - self.halo + self.tile_size, width)[None]
        return item.image[:, rows, cols], item.classes[rows, cols], item.weights[rows, cols]


def load_dataset(
    data_dir: str | os.PathLike[str],
    *,
    class_map: Mapping[int, int] | None = None,
    w0: float = 10.0,
    sigma: float = 5.0,
) -> list[LabelledImage]:
    """Read and check every image/mask pair of a data directory and compute its weight map.

    Masks must be integer (or boolean) (Y, X) labels, 0 = background, of the image's size.
    Without ``class_map`` a mask's non-zero values are object ids of class 1; with it they are
    mapped to classes and objects are the connected regions of one value.

    Returns
    -------
    one :class:`LabelledImage` per pair, sorted by name
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise InputNotFound(f"data directory {root} does not exist")
    images, masks = _listing(root / "images"), _listing(root / "masks")
    missing_masks = sorted(images.keys() - masks.keys())
    missing_images = sorted(masks.keys() - images.keys())
    if missing_masks or missing_images:
        problems = []
        if missing_masks:
            problems.append(f"images without a mask: {_names(missing_masks)}")
        if missing_images:
            problems.append(f"masks without an image: {_names(missing_images)}")
        raise InvalidImage(
            f"{root}: {'; '.join(problems)}: give every image a mask with the same name"
        )
    dataset = [
        _labelled(name, images[name], masks[name], class_map, w0, sigma) for name in sorted(images)
    ]
    channels = {item.image.shape[0] for item in dataset}
    if len(channels) > 1:
        raise InvalidImage(
            f"{root}/images mixes images of {sorted(channels)} channels: use one channel count"
        )
    if not any(item.classes.any() for item in dataset):
        raise InvalidImage(f"every mask in {root}/masks is empty (all 0): nothing to learn")
    return dataset


def split(
    dataset: list[LabelledImage], val_fraction: float, seed: int
) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """Shuffle with ``seed`` and hold out ``round(n * val_fraction)`` images (at least one when
    ``val_fraction > 0`` and n >= 2, never all)."""
    count = len(dataset)
    held_out = 0
    if val_fraction > 0 and count >= 2:
        held_out = min(max(round(count * val_fraction), 1), count - 1)
    order = np.random.default_rng([seed, 1]).permutation(count)
    validation = sorted(order[:held_out].tolist())
    training = sorted(order[held_out:].tolist())
    return [dataset[i] for i in training], [dataset[i] for i in validation]


def normalization(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (float32 (C,)) over all pixels of ``images`` ((C, H, W) each);
    a constant channel gets std 1."""
    total = sum(image.reshape(image.shape[0], -1).sum(axis=1, dtype=np.float64) for image in images)
    count = sum(image[0].size for image in images)
    mean = total / count
    squares = sum(
        ((image.reshape(image.shape[0], -1) - mean[:, None]) ** 2).sum(axis=1) for image in images
    )
    std = np.sqrt(squares / count)
    std[std == 0] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def parse_class_map(text: str) -> dict[int, int]:
    """``"1:1,2:1,3:2"`` -> ``{1: 1, 2: 1, 3: 2}`` (mask value -> class)."""
    mapping = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        value, sep, cls = entry.partition(":")
        try:
            if not sep:
                raise ValueError
            mapping[int(value)] = int(cls)
        except ValueError:
            raise InvalidParameter(
                f"class map entry {entry!r} is not VALUE:CLASS: write e.g. '1:1,2:1,3:2'"
            ) from None
    if not mapping:
        raise InvalidParameter(f"class map {text!r} is empty: write e.g. '1:1,2:1,3:2'")
    if min(mapping) < 0 or min(mapping.values()) < 0:
        raise InvalidParameter(f"class map {text!r} has negative values or classes")
    return mapping


def _labelled(
    name: str,
    image_path: Path,
    mask_path: Path,
    class_map: Mapping[int, int] | None,
    w0: float,
    sigma: float,
) -> LabelledImage:
    image = read_array(image_path)
    if image.dtype == bool:
        raise InvalidImage(f"{image_path} is boolean: images must hold intensities")
    mask = read_array(mask_path)
    if mask.shape[0] != 1:
        raise InvalidImage(f"{mask_path} has {mask.shape[0]} channels: a mask is one (Y, X) plane")
    mask = mask[0]
    if mask.dtype.kind not in "biu":
        raise InvalidImage(
            f"{mask_path} has dtype {mask.dtype}: masks must hold integer labels (0 = background)"
        )
    if mask.shape != image.shape[1:]:
        raise InvalidImage(
            f"{mask_path} is {mask.shape[0]}x{mask.shape[1]} but its image is "
            f"{image.shape[1]}x{image.shape[2]}: masks must match their images"
        )
    mask = mask.astype(np.int64)
    if mask.min() < 0:
        raise InvalidImage(f"{mask_path} holds negative labels: use 0 for background, >0 objects")
    if class_map is None:
        classes, objects = (mask > 0).astype(np.int64), mask
    else:
        classes = _apply_class_map(mask, class_map, mask_path)
        from skimage.measure import label

        objects = label(np.where(classes > 0, mask, 0), background=0, connectivity=1)
    return LabelledImage(
        name=name,
        image=image.astype(np.float32),
        classes=classes,
        weights=weight_map(objects, classes, w0=w0, sigma=sigma),
    )


def _apply_class_map(mask: np.ndarray, class_map: Mapping[int, int], path: Path) -> np.ndarray:
    values = np.unique(mask)
    unmapped = [int(v) for v in values if v != 0 and int(v) not in class_map]
    if unmapped:
        raise InvalidImage(
            f"{path} holds values {_names([str(v) for v in unmapped])} that the class map does "
            "not assign: add them to the class map"
        )
    lookup = np.zeros(int(values.max()) + 1, np.int64)
    for value, cls in class_map.items():
        if value < lookup.size:
            lookup[value] = cls
    return lookup[mask]


def _listing(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputNotFound(
            f"{folder} does not exist: a data directory holds images/ and masks/ with matching "
            "file names"
        )
    entries: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if not any(path.name.lower().endswith(s) for s in SUFFIXES):
            raise UnsupportedInput(f"{path} is not TIFF, PNG or Zarr: convert or remove it")
        stem = file_stem(path)
        if stem in entries:
            raise InvalidImage(f"{entries[stem]} and {path} share the name {stem!r}: keep one")
        entries[stem] = path
    if not entries:
        raise InputNotFound(f"{folder} is empty: put TIFF, PNG or Zarr files there")
    return entries


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _he_init(model: UNet) -> None:
    """The paper's initialisation: Gaussian weights of std sqrt(2 / fan-in), zero biases."""
    import torch
    from torch import nn

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)


def _optimiser(model: UNet, config: TrainConfig) -> torch.optim.Optimizer:
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
