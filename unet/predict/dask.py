"""Lazy inference on a dask array: one task per block of the input's chunking.

Each output block is computed from its own input window (:func:`unet.tiling.input_window`: the
block plus the network's context, its tiles starting on the whole image's pooling grid), with the
image mirrored as ``numpy.pad(mode="reflect")`` where the window leaves the image, exactly as
:func:`unet.predict.predict_array` pads the whole image. (dask's own ``boundary="reflect"`` is
numpy's ``"symmetric"``, which repeats the border pixel, and ``map_overlap`` cuts blocks at
chunk edges that need not lie on the pooling grid: both would change the result.)

Only ``dask.array`` is used here, never ``dask.distributed``: the result runs on whichever
scheduler computes it.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import numpy as np

from unet.errors import InvalidImage
from unet.predict.device import Precision
from unet.predict.window import check_image, check_layout, predict_window
from unet.tiling import Window, default_tile_size, input_window, mirror_pad

if TYPE_CHECKING:
    import dask.array

    from unet.network.model import UNet


def predict_dask(
    model: UNet,
    array: dask.array.Array,
    *,
    tile_size: int | None = None,
    batch_size: int = 4,
    device: str = "cpu",
    precision: Precision = "fp32",
    logits: bool = False,
) -> dask.array.Array:
    """Segment a normalized image held in a dask array, lazily, block by block.

    The contract is :func:`~unet.predict.predict_array`'s, on a dask array: the input is already
    normalized (a raw image goes through the checkpoint's ``normalize`` first, e.g.
    ``raw.map_blocks(checkpoint.normalize, dtype="float32")`` on blocks holding every channel),
    and the result equals ``predict_array`` of the whole image computed at once: every pixel's
    logits come from the same input pixels through the same network, whatever the chunking.

    Parameters
    ----------
    model: a :class:`~unet.network.model.UNet`; it enters the task graph once
    array: float (C, H, W), or (H, W) for a one-channel model; any chunking (the channel axis is
        gathered into each block)
    tile_size: input side of the tiles (a valid size); default: one tile per block, as
        ``unet segment`` does for chunks up to 2048 a side
    batch_size, device, precision: as for :func:`~unet.predict.predict_array`
    logits: return float32 (num_classes, H, W) logits instead of the labels

    Returns
    -------
    A lazy dask array chunked as ``array``'s image axes: uint8 (H, W) labels (the argmax over the
    classes, or ``logit > 0`` for a one-class model, as
    :func:`unet.predict.labels.labels_from_logits` gives), or with ``logits`` float32
    (num_classes, H, W) with the classes in one chunk. A block holding NaN or Inf fails when
    computed, with :class:`~unet.errors.InvalidImage`.

    Examples
    --------
    >>> import dask.array as da, xarray as xr
    >>> checkpoint = unet.load_checkpoint("nuclei")
    >>> raw = da.from_zarr("slide.zarr/0")                   # (C, Y, X), chunks (C, 1024, 1024)
    >>> image = raw.map_blocks(checkpoint.normalize, dtype="float32")
    >>> labels = unet.predict_dask(checkpoint.model, image)  # lazy (Y, X) uint8
    >>> labels[:2048, :2048].compute()                       # only the blocks needed run

    From xarray, with the channel axis named ``c``:

    >>> mask = xr.apply_ufunc(
    ...     lambda block: unet.predict_dask(checkpoint.model, block),
    ...     image_dataarray,
    ...     input_core_dims=[["c", "y", "x"]],
    ...     output_core_dims=[["y", "x"]],
    ...     dask="allowed",
    ... )
    """
    import dask
    import dask.array as da

    image = _check_array(array, model.in_channels)
    geometry = model.geometry
    height, width = image.shape[-2:]
    row_chunks, col_chunks = image.chunks[-2:]
    if tile_size is None:
        tile_size = default_tile_size(geometry, max(*row_chunks, *col_chunks))
    geometry.check_tile_size(tile_size)
    # One graph node holds the model; every block's task refers to it.
    shared_model = dask.delayed(model, name=f"unet-model-{uuid.uuid4().hex}")
    settings = {
        "tile_size": tile_size,
        "batch_size": batch_size,
        "device": device,
        "precision": precision,
        "logits": logits,
    }
    num_classes = model.num_classes
    block_rows = []
    for rows in _bounds(row_chunks):
        block_row = []
        for cols in _bounds(col_chunks):
            window = input_window(rows, cols, (height, width), tile_size, geometry)
            inside = image[:, window.read_rows, window.read_cols]
            shape = (rows.stop - rows.start, cols.stop - cols.start)
            task = dask.delayed(_predict_block, pure=True)(shared_model, inside, window, settings)
            if logits:
                block = da.from_delayed(task, (num_classes, *shape), dtype=np.float32)
            else:
                block = da.from_delayed(task, shape, dtype=np.uint8)
            block_row.append(block)
        block_rows.append(block_row)
    return da.block(block_rows)


def _check_array(array, channels: int):
    """``array`` as a (C, H, W) dask array with the channels in one chunk."""
    import dask.array as da

    if not isinstance(array, da.Array):
        raise InvalidImage(
            f"predict_dask takes a dask array, got {type(array).__name__}: wrap it with "
            "dask.array.from_array, or use predict_array for a numpy array"
        )
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise InvalidImage(
            f"image must be (C, H, W) or (H, W), got shape {array.shape}: move the channel "
            "axis first (array.transpose) and drop other axes"
        )
    check_layout(array.shape, array.dtype, channels)
    return array.rechunk({0: -1})


def _bounds(chunks: tuple[int, ...]) -> list[slice]:
    """The slices of consecutive chunks of the given lengths."""
    stops = np.cumsum(chunks).tolist()
    return [slice(stop - length, stop) for stop, length in zip(stops, chunks, strict=True)]


def _predict_block(model: UNet, inside: np.ndarray, window: Window, settings: dict) -> np.ndarray:
    """One output block: the part of its window inside the image, mirrored and inferred."""
    inside = check_image(np.asarray(inside), model.in_channels)
    padded = mirror_pad(inside, window.pad_before, window.pad_after)
    crop = window.crop()
    result = predict_window(
        model,
        padded,
        window.out_shape,
        tile_size=settings["tile_size"],
        batch_size=settings["batch_size"],
        device=settings["device"],
        precision=settings["precision"],
        labels=not settings["logits"],
    )
    if settings["logits"]:
        return np.ascontiguousarray(result[(slice(None), *crop)])
    return np.ascontiguousarray(result[crop])
