"""Geometry of the paper's overlap-tile strategy: pure numpy, no torch, no Dask.

- :mod:`~unet.tiling.geometry`: halo, valid input sides, the pooling grid (:class:`Geometry`);
- :mod:`~unet.tiling.tiles`: tile origins along an axis and the default tile side;
- :mod:`~unet.tiling.mirror`: mirroring at the image border, as ``numpy.pad(mode="reflect")``;
- :mod:`~unet.tiling.chunks`: a chunk's bounds, input window, mirror pads and crop offsets.
"""

from unet.tiling.chunks import (
    STRIP_WIDTH,
    ChunkGrid,
    Window,
    cells_in_chunks,
    input_window,
    strip_order,
    strip_order_array,
)
from unet.tiling.geometry import SAME_MARGIN_UNITS, Geometry, Padding
from unet.tiling.mirror import mirror_pad, reflect_index
from unet.tiling.tiles import AxisTiles, axis_tiles, default_tile_size, window_shape

__all__ = [
    "SAME_MARGIN_UNITS",
    "STRIP_WIDTH",
    "AxisTiles",
    "ChunkGrid",
    "Geometry",
    "Padding",
    "Window",
    "axis_tiles",
    "default_tile_size",
    "input_window",
    "mirror_pad",
    "reflect_index",
    "strip_order",
    "strip_order_array",
    "cells_in_chunks",
    "window_shape",
]
