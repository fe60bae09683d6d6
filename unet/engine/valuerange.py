"""Whether an image's values are those the model was trained on, checked before a run starts.

The checkpoint fixes the normalization (mean/std) and, for checkpoints that record it, the range
of the training pixels (metadata ``input_range``, ``[low, high]``, and ``input_dtype``). An
image on another scale is never rescaled by guesswork (the same model would then give other
results per image): a run whose image lies far outside the model's range is refused, naming
both ranges and the fix. A uint16 image holding the same values as 8-bit data keeps working;
the same image times 257 (its 16-bit rendering) is refused.

The image's range is estimated cheaply: from its low-resolution view where a pyramid (or a
small image) gives one, otherwise from a few stored chunks spread over the image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from unet.errors import RangeMismatch

if TYPE_CHECKING:
    from unet.io.source import ImageSource
    from unet.network.checkpoint import Checkpoint

#: Percentiles of the image's values taken as its range: one hot or dead pixel in a thousand
#: does not move them.
LOW_PERCENTILE, HIGH_PERCENTILE = 0.1, 99.9
#: Without a recorded range, the training pixels are taken to lie within mean +- this many std.
FALLBACK_STDS = 4.0
#: Sides of the low-resolution view read, and stored chunks read where there is none.
LOW_RESOLUTION_SIDE = 1024
SAMPLE_GRID = 3
MAX_VALUES = 1_000_000


def training_range(checkpoint: Checkpoint) -> tuple[float, float, bool]:
    """(low, high, recorded): the training pixels' range from the checkpoint's metadata, or
    estimated from its mean/std (``recorded`` False) for checkpoints without one."""
    recorded = checkpoint.metadata.get("input_range")
    if (
        isinstance(recorded, list | tuple)
        and len(recorded) == 2
        and all(isinstance(v, int | float) and np.isfinite(v) for v in recorded)
        and recorded[0] <= recorded[1]
    ):
        return float(recorded[0]), float(recorded[1]), True
    low = float(np.min(checkpoint.mean - FALLBACK_STDS * checkpoint.std))
    high = float(np.max(checkpoint.mean + FALLBACK_STDS * checkpoint.std))
    return low, high, False


def check_value_range(
    source: ImageSource, checkpoint: Checkpoint, model_name: str, nodata: float | None = None
) -> None:
    """Refuse an image whose values lie far outside the range the model was trained on.

    Far means beyond the training range widened by its own width on either side (values up to
    ``high + (high - low)``); or, for a model trained on pixels beyond 2, a float image whose
    values all lie in [0, 1] (an image scaled to [0, 1] for a model of raw intensities).
    Pixels equal to ``nodata``, NaN or infinite do not count.

    Raises
    ------
    RangeMismatch: the image's values do not fit the model, with the fix
    """
    low, high, recorded = training_range(checkpoint)
    values = _sample(source)
    values = values[np.isfinite(values)]
    if nodata is not None:
        values = values[values != nodata]
    if values.size == 0:
        return
    values = values[:: -(-values.size // MAX_VALUES)]  # percentiles of 1e6 values are plenty
    image_low, image_high = np.percentile(values, (LOW_PERCENTILE, HIGH_PERCENTILE))
    span = max(high - low, 1e-6)
    trained = _trained_on(checkpoint, low, high, recorded)
    if image_high > high + span or image_low < low - span:
        raise RangeMismatch(
            f"{source.url} holds {source.dtype} values in about [{image_low:.4g}, {image_high:.4g}]"
            f" but model {model_name!r} was trained on {trained}: rescale the image to the "
            "model's range (e.g. a 16-bit rendering of 8-bit data divided by 257), or use a "
            "model trained on images like it"
        )
    unit_scaled = source.dtype.startswith("float") and values.min() >= 0 and values.max() <= 1
    if recorded and high > 2 and unit_scaled and values.max() > values.min():
        raise RangeMismatch(
            f"{source.url} holds {source.dtype} values within [0, 1] but model {model_name!r} "
            f"was trained on {trained}: multiply the image back to the model's range (e.g. "
            "by 255 for 8-bit data), or use a model trained on [0, 1] images"
        )


def _trained_on(checkpoint: Checkpoint, low: float, high: float, recorded: bool) -> str:
    if not recorded:
        return (
            f"pixels of mean {_listed(checkpoint.mean)} and std {_listed(checkpoint.std)} "
            f"(about [{low:.4g}, {high:.4g}])"
        )
    dtype = checkpoint.metadata.get("input_dtype")
    return f"{dtype + ' ' if isinstance(dtype, str) else ''}pixels in [{low:.4g}, {high:.4g}]"


def _listed(values: np.ndarray) -> str:
    return "/".join(f"{v:.4g}" for v in np.asarray(values).ravel())


def _sample(source: ImageSource) -> np.ndarray:
    """float32 (C, n): values of the image, from its low-resolution view when that is cheap
    (a pyramid, or an image that small), else from a grid of stored chunks.

    Chunks that cannot be read are left out: the chunk tasks that need them report them.
    """
    _, height, width = source.shape
    if len(source.level_paths) > 1 or max(height, width) <= 2 * LOW_RESOLUTION_SIDE:
        try:
            low, _ = source.low_resolution(LOW_RESOLUTION_SIDE)
            return low.reshape(low.shape[0], -1)
        except Exception:  # a damaged chunk (whatever the codec raises): sample around it
            pass
    chunk_rows, chunk_cols = source.chunks or (LOW_RESOLUTION_SIDE, LOW_RESOLUTION_SIDE)
    blocks = [np.empty((source.shape[0], 0), np.float32)]
    for i in range(SAMPLE_GRID):
        for j in range(SAMPLE_GRID):
            # The stored chunk around the centre of each cell of a 3 x 3 grid.
            row = (height * (2 * i + 1) // (2 * SAMPLE_GRID)) // chunk_rows * chunk_rows
            col = (width * (2 * j + 1) // (2 * SAMPLE_GRID)) // chunk_cols * chunk_cols
            try:
                block = source.read(
                    slice(row, min(row + chunk_rows, height)),
                    slice(col, min(col + chunk_cols, width)),
                )
            except Exception:  # as above
                continue
            # Every step-th value (about MAX_VALUES in all), before converting: converting and
            # sorting the 9 Mpx of 1024^2 chunks was a visible part of a run's driver time.
            flat = block.reshape(block.shape[0], -1)
            step = -(-flat.shape[1] // (MAX_VALUES // SAMPLE_GRID**2))
            blocks.append(flat[:, ::step].astype(np.float32))
    return np.concatenate(blocks, axis=1)
