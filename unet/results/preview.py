"""A small picture of a result: the mask's colours blended over a low-resolution input.

Only low-resolution data is read: the coarsest pyramid level of the mask that still has about
``max_side`` pixels a side (output group arrays "0", "1", ...), and the input's low-resolution
view (``ImageSource.low_resolution``). The PNG goes next to the mask (``<name>.preview.png``,
see :func:`preview_path`) and, as a data URI, into a markdown artifact.

The pixel work here is pure numpy on arrays of at most a few hundred pixels a side.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: Longest side of a preview, in pixels.
MAX_SIDE = 512
#: Opacity of a label colour over the image.
ALPHA = 0.45


def preview_path(output: str, image: str | None = None) -> str:
    """Where the preview of the mask ``output`` goes: beside it (``masks/a.zarr`` ->
    ``masks/a.preview.png``), or for a mask inside its ``image`` (``IMAGE.zarr/labels/NAME``)
    beside the image (``IMAGE.NAME.preview.png``), so that nothing but the mask enters the image."""
    if image is not None:
        name = str(output).rstrip("/").rsplit("/", 1)[-1]
        return f"{str(image).rstrip('/').removesuffix('.zarr')}.{name}.preview.png"
    base = str(output).rstrip("/")
    if base.endswith(".zarr"):
        base = base[: -len(".zarr")]
    return f"{base}.preview.png"


def render_preview(
    input: str, output: str, *, channels_last: bool = False, max_side: int = MAX_SIDE
) -> bytes:
    """PNG bytes of the mask at ``output`` over the image at ``input``, at most ``max_side`` a side.

    Label colours are those of the mask's OME ``image-label`` metadata (the checkpoint's).
    """
    import zarr

    from unet.io.source import open_image

    group = zarr.open_group(output, mode="r")
    labels = mask_overview(group, max_side)
    low, _ = open_image(input, channels_last=channels_last).low_resolution(max_side)
    image = resize_nearest(display_image(np.asarray(low)), labels.shape)
    return png_bytes(blend(image, labels, label_colours(dict(group.attrs))))


def label_colours(attributes: dict) -> list[tuple[int, int, int]]:
    """RGB per label value from OME ``image-label`` ``colors``; default colours where missing."""
    from unet.network.checkpoint import default_colours

    colours = default_colours(256)
    for entry in attributes.get("ome", {}).get("image-label", {}).get("colors", []):
        value, rgba = entry.get("label-value"), entry.get("rgba")
        if isinstance(value, int) and 0 <= value < 256 and rgba and len(rgba) >= 3:
            colours[value] = (int(rgba[0]), int(rgba[1]), int(rgba[2]))
    return colours


def mask_overview(group, max_side: int) -> np.ndarray:
    """uint8 (h, w) labels from the finest pyramid level of ``group`` that fits ``max_side``.

    When even the coarsest level is larger, it is read with a stride.
    """
    levels = sorted((name for name in group.array_keys() if name.isdigit()), key=int)
    if not levels:
        raise ValueError(f"{group.store} has no pyramid levels (arrays '0', '1', ...)")
    chosen = next((n for n in levels if max(group[n].shape[-2:]) <= max_side), levels[-1])
    array = group[chosen]
    step = -(-max(array.shape[-2:]) // max_side)
    index = (0,) * (array.ndim - 2) + (slice(None, None, step), slice(None, None, step))
    return np.asarray(array[index]).astype(np.uint8)


def display_image(image: np.ndarray) -> np.ndarray:
    """uint8 (h, w, 3) of a (C, h, w) image: RGB when C == 3, else the first channel in grey.

    Each channel is stretched between its 1st and 99th percentile, so 16-bit or float images
    show as well as 8-bit ones.
    """
    channels = image[:3] if image.shape[0] == 3 else image[:1]
    planes = []
    for plane in channels.astype(np.float32):
        low, high = np.percentile(plane, (1, 99)) if plane.size else (0.0, 1.0)
        scale = 255.0 / (high - low) if high > low else 0.0
        planes.append(np.clip((plane - low) * scale, 0, 255))
    rgb = np.stack(planes * 3 if len(planes) == 1 else planes, axis=-1)
    return rgb.astype(np.uint8)


def resize_nearest(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``image`` (h, w, ...) resampled to ``shape`` by nearest neighbour (pixel centres)."""
    rows = ((np.arange(shape[0]) + 0.5) * image.shape[0] / shape[0]).astype(int)
    cols = ((np.arange(shape[1]) + 0.5) * image.shape[1] / shape[1]).astype(int)
    return image[np.minimum(rows, image.shape[0] - 1)][:, np.minimum(cols, image.shape[1] - 1)]


def blend(
    image: np.ndarray, labels: np.ndarray, colours: Sequence[Sequence[int]], alpha: float = ALPHA
) -> np.ndarray:
    """uint8 (h, w, 3): ``image`` with each non-zero label's colour laid over at ``alpha``.

    Label 0 (background) stays uncoloured; ``colours[k]`` is label k's RGB.
    """
    palette = np.zeros((256, 3), np.float32)
    known = np.asarray(colours, np.float32).reshape(-1, 3)[:256]
    palette[: len(known)] = known
    overlay = palette[labels]
    weight = np.where(labels > 0, alpha, 0.0)[..., None]
    return np.round(image * (1 - weight) + overlay * weight).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to a local path or an fsspec URL.

    A local file is written beside ``path`` and renamed over it: a symbolic link at ``path``
    is replaced, never written through (it could lead into the input), and a failed write
    leaves no half-written PNG.
    """
    if "://" in path:
        import fsspec

        with fsspec.open(path, "wb") as file:
            file.write(data)
        return
    import os
    import uuid

    target = Path(path)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        partial.write_bytes(data)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
