"""Image sizes as people read them: width first, always labelled.

Arrays are indexed ``(..., Y, X)`` (rows, then columns), while people and image tools say
"width × height". Every size the project prints, logs or records (the CLI, the report, the
Prefect artifacts and log lines, the preview's captions) goes through :func:`size_label`, so
that no output says ``700x500`` where another says ``500 × 700``.
"""

from __future__ import annotations

from collections.abc import Sequence

#: What follows every size, so that nobody has to guess the order.
ORDER = "(width × height)"


def size_label(width: int, height: int) -> str:
    """``"8192 × 6144 px (width × height)"``."""
    return f"{int(width)} × {int(height)} px {ORDER}"


def shape_label(shape: Sequence[int]) -> str:
    """The size of an array of shape ``(..., Y, X)``: ``(1, 500, 700)`` ->
    ``"700 × 500 px (width × height)"``."""
    height, width = shape[-2:]
    return size_label(width, height)


def shapes_label(shapes: Sequence[Sequence[int]]) -> str:
    """Several sizes of ``(..., Y, X)`` shapes in one label (a pyramid's levels):
    ``"700 × 500, 350 × 250 px (width × height)"``."""
    sizes = ", ".join(f"{int(shape[-1])} × {int(shape[-2])}" for shape in shapes)
    return f"{sizes} px {ORDER}"
