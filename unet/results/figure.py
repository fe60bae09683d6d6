"""A figure of image panels with a title, captions and a legend, as one RGB array.

What the preview (:mod:`unet.results.preview`) draws around its panels. Text is set in DejaVu
Sans where the system has it (it has the × of sizes), else in Pillow's own font, with × written
x. Pure Pillow and numpy; the panels are at most a few hundred pixels a side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MARGIN, GAP, TEXT, TITLE, SWATCH = 12, 16, 13, 16, 12
PAPER, INK = (255, 255, 255), (20, 20, 20)
#: The font with the signs the captions use, where the system has it.
FONT_FILE = "DejaVuSans.ttf"
#: Captions are wrapped at a panel's width, or at this many pixels for narrower panels.
MIN_CAPTION_WIDTH = 200


@dataclass(frozen=True)
class Swatch:
    """A legend entry: a square of ``colour`` (None: an empty square) and a name."""

    name: str
    colour: tuple[int, int, int] | None


@dataclass(frozen=True)
class Ramp:
    """A legend entry: a colour scale, ``colours`` uint8 (n, 3) from left to right, between the
    texts ``low`` and ``high``."""

    colours: np.ndarray
    low: str
    high: str


def compose(
    title: str, panels: Sequence[tuple[np.ndarray, str]], legend: Sequence[Swatch | Ramp]
) -> np.ndarray:
    """uint8 (h, w, 3): ``title``, the panels (uint8 (h, w, 3), each with its caption below)
    side by side, and the legend's entries in rows."""
    from PIL import Image, ImageDraw

    font, heading = _font(TEXT), _font(TITLE)
    line = TEXT + 5
    width = max(sum(p.shape[1] for p, _ in panels) + GAP * (len(panels) - 1) + 2 * MARGIN, 360)
    captions = [
        _wrapped(printable(text, font), font, max(panel.shape[1], MIN_CAPTION_WIDTH))
        for panel, text in panels
    ]
    panel_height = max(panel.shape[0] for panel, _ in panels)
    caption_height = max(len(lines) for lines in captions) * line
    rows = _legend_rows(legend, font, width - 2 * MARGIN)
    top = MARGIN + TITLE + 10
    legend_top = top + panel_height + 6 + caption_height + 8
    picture = Image.new("RGB", (width, legend_top + len(rows) * (line + 4) + MARGIN), PAPER)
    draw = ImageDraw.Draw(picture)
    draw.text((MARGIN, MARGIN), printable(title, heading), fill=INK, font=heading)
    x = MARGIN
    for (panel, _), lines in zip(panels, captions, strict=True):
        picture.paste(Image.fromarray(panel), (x, top))
        for k, text in enumerate(lines):
            draw.text((x, top + panel_height + 6 + k * line), text, fill=INK, font=font)
        x += panel.shape[1] + GAP
    for k, row in enumerate(rows):
        x, y = MARGIN, legend_top + k * (line + 4)
        for entry, advance in row:
            _draw_entry(draw, font, (x, y), entry)
            x += advance
    return np.asarray(picture)


def outline(image: np.ndarray, box: Sequence[int]) -> None:
    """Draw the rectangle ``(x0, y0, x1, y1)`` (end exclusive) into ``image`` (h, w, 3), white
    with a dark rim so that it shows on light and dark cells."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    x0, y0, x1, y1 = box
    x1, y1 = max(x1 - 1, x0 + 2), max(y1 - 1, y0 + 2)
    draw.rectangle((x0 - 1, y0 - 1, x1 + 1, y1 + 1), outline=INK)
    draw.rectangle((x0, y0, x1, y1), outline=(255, 255, 255), width=2)
    image[...] = np.asarray(picture)


def printable(text: str, font: Any) -> str:
    """``text`` with × written x where ``font`` lacks the sign (Pillow's own font does)."""
    name = font.getname()[0] if hasattr(font, "getname") else ""
    return text if name == "DejaVu Sans" else text.replace("×", "x")


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.truetype(FONT_FILE, size)
    except OSError:
        return ImageFont.load_default(size=size)


def _legend_rows(
    legend: Sequence[Swatch | Ramp], font: Any, width: int
) -> list[list[tuple[Swatch | Ramp, int]]]:
    """The legend's entries in rows that fit ``width``, each with its horizontal advance."""
    rows: list[list[tuple[Swatch | Ramp, int]]] = [[]]
    used = 0
    for entry in legend:
        if isinstance(entry, Swatch):
            advance = SWATCH + 6 + int(font.getlength(printable(entry.name, font))) + 18
        else:
            text = font.getlength(entry.low) + font.getlength(entry.high)
            advance = int(text) + len(entry.colours) + 12 + 18
        if rows[-1] and used + advance > width:
            rows.append([])
            used = 0
        rows[-1].append((entry, advance))
        used += advance
    return rows


def _draw_entry(draw: Any, font: Any, at: tuple[int, int], entry: Swatch | Ramp) -> None:
    x, y = at
    if isinstance(entry, Swatch):
        draw.rectangle(
            (x, y + 2, x + SWATCH, y + 2 + SWATCH), fill=entry.colour or PAPER, outline=INK
        )
        draw.text((x + SWATCH + 6, y), printable(entry.name, font), fill=INK, font=font)
        return
    draw.text((x, y), entry.low, fill=INK, font=font)
    x += int(font.getlength(entry.low)) + 6
    for k, colour in enumerate(entry.colours):
        draw.line((x + k, y + 2, x + k, y + 2 + SWATCH), fill=tuple(int(c) for c in colour))
    draw.text((x + len(entry.colours) + 6, y), entry.high, fill=INK, font=font)


def _wrapped(text: str, font: Any, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` pixels, broken between words."""
    lines, current = [], ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if current and font.getlength(candidate) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    return lines + ([current] if current else [])
