"""How the stored axes of an array map onto ``(C, Y, X)``.

A plain array is ``(Y, X)``, ``(C, Y, X)`` or, with ``channels_last``, ``(Y, X, C)``; a Zarr v3
array whose ``dimension_names`` name ``y`` and ``x`` uses those names. An OME-Zarr group gives the
axes in its ``multiscales`` metadata. Singleton axes other than ``c``, ``y``, ``x`` (``t``, ``z``)
are dropped; a longer one is refused, because the model segments single planes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from unet.errors import InvalidImage, InvalidParameter

if TYPE_CHECKING:
    import zarr


#: Names given to the channel and the two image axes.
CHANNEL, ROWS, COLUMNS = "c", "y", "x"
#: A third axis at most this long, behind a longer first axis, is taken for colour samples.
_MAX_TRAILING_CHANNELS = 4


def ome_axes(
    location: str, multiscale: dict[str, Any], ndim: int
) -> tuple[list[str], list[str | None]]:
    """Axis names and types from NGFF metadata (0.3 strings, 0.4+ objects, 0.1-0.2 implicit).

    Raises InvalidImage for axes that are not a list of names or of objects with a ``name``.
    """
    axes = multiscale.get("axes")
    if axes is None:
        names = ["t", "c", "z", "y", "x"][-ndim:] if ndim <= 5 else []
        return names, [None] * len(names)
    names: list[str] = []
    types: list[str | None] = []
    for axis in axes if isinstance(axes, list) else [axes]:
        name = axis.get("name") if isinstance(axis, dict) else axis
        kind = axis.get("type") if isinstance(axis, dict) else None
        if not isinstance(name, str) or not name or not isinstance(kind, str | None):
            raise InvalidImage(
                f"OME-Zarr image {location} has an axis {axis!r} without a name: axes are "
                'a list of names or of {"name": ..., "type": ...}; fix its multiscales metadata'
            )
        names.append(name)
        types.append(kind)
    if len({name.lower() for name in names}) != len(names):
        raise InvalidImage(
            f"OME-Zarr image {location} names an axis twice {tuple(names)}: fix its multiscales "
            "metadata"
        )
    return names, types


def ome_scale(
    location: str, multiscale: dict[str, Any], dataset: dict[str, Any], ndim: int
) -> list[float] | None:
    """Level scale: the dataset's scale times the multiscale-wide scale, if any is given.

    Raises InvalidImage for a scale that is not a list of finite positive numbers.
    """
    found = False
    scale = [1.0] * ndim
    for transforms in (
        dataset.get("coordinateTransformations"),
        multiscale.get("coordinateTransformations"),
    ):
        for transform in transforms if isinstance(transforms, list) else []:
            if not isinstance(transform, dict) or transform.get("type") != "scale":
                continue
            values = transform.get("scale")
            if not isinstance(values, list) or len(values) != ndim:
                continue
            numbers = [_scale_value(location, value) for value in values]
            scale = [a * b for a, b in zip(scale, numbers, strict=True)]
            found = True
    return scale if found else None


def _scale_value(location: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        number = float("nan")
    else:
        number = float(value)
    if not (np.isfinite(number) and number > 0):
        raise InvalidImage(
            f"OME-Zarr image {location} has a scale value {value!r}: scales are positive "
            "numbers; fix its coordinateTransformations"
        )
    return number


def normalise_axes(
    location: str, names: list[str], types: list[str | None], shape: tuple[int, ...]
) -> tuple[str, ...]:
    """Stored axis names with the channel axis called ``c`` and the image axes ``y``, ``x``.

    Raises InvalidImage when an axis other than those three is longer than 1.
    """
    lowered = [name.lower() for name in names]
    if ROWS in lowered and COLUMNS in lowered:
        # By name, in whatever order they are stored: [x, y] is as good as [y, x].
        image_axes = [lowered.index(ROWS), lowered.index(COLUMNS)]
    else:
        space = [i for i, kind in enumerate(types) if kind == "space"]
        if len(space) < 2:
            space = [i for i, name in enumerate(lowered) if name in ("z", "y", "x")]
        if len(space) < 2:
            raise InvalidImage(
                f"image {location} has axes {tuple(names)} without two image axes (y, x): "
                "store it with y and x axes"
            )
        image_axes = space[-2:]
    channel = [i for i, kind in enumerate(types) if kind == "channel"]
    channel = channel or [i for i, name in enumerate(lowered) if name == CHANNEL]
    channel = [i for i in channel if i not in image_axes]
    roles = {image_axes[0]: ROWS, image_axes[1]: COLUMNS}
    if channel:
        roles[channel[0]] = CHANNEL
    axes = tuple(roles.get(i, lowered[i]) for i in range(len(names)))
    for axis, length in zip(axes, shape, strict=True):
        if axis not in (CHANNEL, ROWS, COLUMNS) and length != 1:
            raise InvalidImage(
                f"image {location} has a '{axis}' axis of length {length} (axes {axes}, "
                f"shape {tuple(shape)}): only single 2-D planes are segmented; extract one "
                f"{axis} plane into its own array first"
            )
    return axes


def array_axes(location: str, array: zarr.Array, channels_last: bool) -> tuple[str, ...]:
    """Axis names of a plain array: its v3 dimension names, else from its number of axes."""
    shape = tuple(array.shape)
    names = getattr(array.metadata, "dimension_names", None)
    if names and all(isinstance(n, str) for n in names):
        lowered = [n.lower() for n in names]
        if ROWS in lowered and COLUMNS in lowered:
            axes = normalise_axes(location, list(names), [None] * len(names), shape)
            if channels_last and CHANNEL in axes and axes.index(CHANNEL) < axes.index(ROWS):
                raise InvalidParameter(
                    f"channels_last was given but {location} names its axes {axes}: "
                    "drop --channels-last"
                )
            return axes
    if array.ndim == 2:
        return (ROWS, COLUMNS)
    if array.ndim == 3:
        if channels_last:
            return (ROWS, COLUMNS, CHANNEL)
        if shape[2] <= _MAX_TRAILING_CHANNELS < shape[0]:
            raise InvalidImage(
                f"array {location} of shape {shape} looks like (Y, X, C), not (C, Y, X): "
                "pass --channels-last (channels_last=True)"
            )
        return (CHANNEL, ROWS, COLUMNS)
    raise InvalidImage(
        f"array {location} has {array.ndim} axes {shape}: give a (Y, X) or (C, Y, X) array, "
        "or an OME-Zarr image group whose metadata names the axes"
    )


def spatial_shape(array: zarr.Array, axes: tuple[str, ...]) -> tuple[int, int]:
    return int(array.shape[axes.index(ROWS)]), int(array.shape[axes.index(COLUMNS)])


def spatial_chunks(array: zarr.Array, axes: tuple[str, ...]) -> tuple[int, int]:
    chunks = getattr(array, "shards", None) or array.chunks
    return int(chunks[axes.index(ROWS)]), int(chunks[axes.index(COLUMNS)])


def select_region(
    array: zarr.Array,
    axes: tuple[str, ...],
    rows: slice,
    cols: slice,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``array`` indexed by image rows and columns, as ``(C, h, w)`` in the stored dtype.

    ``out``: a C-contiguous ``(C, h, w)`` array of the stored dtype to fill and return. Where
    the stored axes come in that order (``(C, Y, X)``, ``(Y, X)``, singleton axes aside) the
    chunks are decoded straight into it, without a buffer of their own.
    """
    picks = {ROWS: rows, COLUMNS: cols, CHANNEL: slice(None)}
    selection = tuple(picks.get(axis, 0) for axis in axes)
    kept = [axis for axis in axes if axis in picks]
    if out is not None and [axis for axis in kept if axis != CHANNEL] == [ROWS, COLUMNS]:
        if kept[0] == CHANNEL or CHANNEL not in kept:
            from zarr.core.buffer.cpu import NDBuffer

            target = out if CHANNEL in kept else out[0]
            array.get_orthogonal_selection(selection, out=NDBuffer.from_numpy_array(target))
            return out
    block = np.asarray(array[selection])
    if CHANNEL not in kept:
        block = block[np.newaxis]
        kept.insert(0, CHANNEL)
    order = [kept.index(axis) for axis in (CHANNEL, ROWS, COLUMNS)]
    if out is not None:
        out[...] = block.transpose(order)
        return out
    return np.ascontiguousarray(block.transpose(order))
