"""A picture of how training went: loss and validation Dice over the steps, drawn with Pillow
(already a dependency) so that training needs no plotting library."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

WIDTH, HEIGHT = 800, 520
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 70, 20, 30, 45
LOSS_COLOUR, MEAN_COLOUR, DICE_COLOUR = (190, 190, 235), (40, 60, 200), (200, 40, 40)


def plot_path(checkpoint: str | os.PathLike[str]) -> Path:
    """The plot beside ``checkpoint``: ``model.safetensors`` -> ``model.png``."""
    return Path(checkpoint).with_suffix(".png")


def write_training_plot(
    path: str | os.PathLike[str],
    losses: list[float],
    val_steps: list[int],
    val_dice: list[float | None],
    total_steps: int,
) -> Path:
    """Write a PNG with two panels: the training loss of every step (pale) and its running mean
    over a twentieth of the run (dark) above, the validation Dice (0 to 1) below, both over the
    steps ``1 .. total_steps``.

    Returns
    -------
    the path written
    """
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    panel = (HEIGHT - MARGIN_TOP - MARGIN_BOTTOM - 30) // 2
    loss_box = (MARGIN_LEFT, MARGIN_TOP, WIDTH - MARGIN_RIGHT, MARGIN_TOP + panel)
    dice_box = (MARGIN_LEFT, loss_box[3] + 30, WIDTH - MARGIN_RIGHT, loss_box[3] + 30 + panel)
    steps = np.arange(1, len(losses) + 1)
    top = max(float(np.max(losses)), 1e-6) if losses else 1.0
    _axes(draw, loss_box, "training loss", (0.0, top), total_steps)
    if losses:
        _line(draw, loss_box, steps, np.asarray(losses), (0.0, top), total_steps, LOSS_COLOUR)
        window = max(total_steps // 20, 1)
        running = np.convolve(losses, np.ones(window) / window, mode="valid")
        _line(draw, loss_box, steps[window - 1 :], running, (0.0, top), total_steps, MEAN_COLOUR)
    _axes(draw, dice_box, "validation Dice", (0.0, 1.0), total_steps)
    scored = [(s, d) for s, d in zip(val_steps, val_dice, strict=True) if d is not None]
    if scored:
        xs, ys = (np.asarray(column, np.float64) for column in zip(*scored, strict=True))
        _line(draw, dice_box, xs, ys, (0.0, 1.0), total_steps, DICE_COLOUR, dots=True)
        draw.text((dice_box[2] - 120, dice_box[1] + 5), f"last {ys[-1]:.3f}", fill=DICE_COLOUR)
    draw.text((WIDTH // 2 - 20, HEIGHT - 20), "step", fill="black")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def _axes(draw, box, title: str, limits: tuple[float, float], total_steps: int) -> None:
    left, top, right, bottom = box
    draw.rectangle(box, outline="black")
    draw.text((left, top - 14), title, fill="black")
    for fraction in (0.0, 0.5, 1.0):
        value = limits[0] + fraction * (limits[1] - limits[0])
        y = bottom - fraction * (bottom - top)
        draw.line((left - 4, y, left, y), fill="black")
        draw.text((5, y - 6), f"{value:.3g}", fill="black")
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = left + fraction * (right - left)
        draw.line((x, bottom, x, bottom + 4), fill="black")
        draw.text((x - 10, bottom + 6), str(round(fraction * total_steps)), fill="black")


def _line(draw, box, xs, ys, limits, total_steps: int, colour, dots: bool = False) -> None:
    left, top, right, bottom = box
    px = left + (np.asarray(xs, np.float64) / max(total_steps, 1)) * (right - left)
    clipped = np.clip(np.asarray(ys, np.float64), limits[0], limits[1])
    py = bottom - (clipped - limits[0]) / (limits[1] - limits[0]) * (bottom - top)
    points = list(zip(px.tolist(), py.tolist(), strict=True))
    if len(points) > 1:
        draw.line(points, fill=colour, width=2)
    if dots:
        for x, y in points:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
