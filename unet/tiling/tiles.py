"""Tiles along an axis: aligned origins, the input window they need, and the default tile side."""

from __future__ import annotations

from dataclasses import dataclass

from unet.errors import InvalidInputSize
from unet.tiling.geometry import Geometry


@dataclass(frozen=True)
class AxisTiles:
    """Tiles along one axis covering output pixels ``0 .. length-1``.

    Attributes
    ----------
    origins: start of each tile's input window in padded coordinates, multiples of ``2**depth``
    tile: input side of every tile along this axis
    keep: output pixels each tile contributes after cropping the same-mode margin
    window: input pixels needed in padded coordinates, ``origins[-1] + tile``
    """

    origins: tuple[int, ...]
    tile: int
    keep: int

    @property
    def window(self) -> int:
        return self.origins[-1] + self.tile


def axis_tiles(length: int, tile_size: int, geometry: Geometry) -> AxisTiles:
    """Aligned tile origins covering ``length`` output pixels with tiles of at most ``tile_size``.

    An axis shorter than one tile gets one tile of the smallest valid side that covers it. Tiles
    advance by the largest multiple of ``2**depth`` not above the kept output side; the last tile
    is moved back, on the grid, as far as it can while still reaching the end.
    """
    if length < 1:
        raise InvalidInputSize(f"cannot tile an empty axis (length {length})")
    geometry.check_tile_size(tile_size)
    context, align = geometry.context, geometry.align
    whole = geometry.valid_at_least(length + 2 * context)
    tile = min(tile_size, whole)
    keep = tile - 2 * context
    if keep >= length:
        return AxisTiles(origins=(0,), tile=tile, keep=keep)
    stride = keep - keep % align
    last = -(-(length - keep) // align) * align
    origins = list(range(0, last, stride)) + [last]
    return AxisTiles(origins=tuple(origins), tile=tile, keep=keep)


#: Largest chunk side for which the engine's default tile covers a whole chunk in one tile.
WHOLE_CHUNK_TILE_LIMIT = 2048
#: Output pixels per tile side aimed at by the default tile size (before adding the context).
DEFAULT_TILE_OUTPUT = 512


def default_tile_size(geometry: Geometry, chunk: int | None = None) -> int:
    """The default tile side.

    For a chunk side up to ``WHOLE_CHUNK_TILE_LIMIT``, the smallest valid tile that covers the
    chunk in one tile: chunk origins lie on the pooling grid when the chunk side is a multiple of
    ``2**depth``, so each chunk is one forward pass and only the halo is computed twice.
    Otherwise, and for in-memory arrays, the smallest valid tile keeping at least
    ``DEFAULT_TILE_OUTPUT`` output pixels a side. Never below ``geometry.smallest_tile``
    (a chunk of a few pixels still needs a tile that can be tiled).
    """
    if chunk is not None and chunk <= WHOLE_CHUNK_TILE_LIMIT:
        return max(geometry.valid_at_least(chunk + 2 * geometry.context), geometry.smallest_tile)
    return geometry.valid_at_least(DEFAULT_TILE_OUTPUT + 2 * geometry.context)


def window_shape(out_shape: tuple[int, int], tile_size: int, geometry: Geometry) -> tuple[int, int]:
    """Input window ``(h, w)``, in padded coordinates, that tiles of ``tile_size`` need to
    produce ``out_shape`` output pixels (see :func:`axis_tiles`)."""
    return (
        axis_tiles(out_shape[0], tile_size, geometry).window,
        axis_tiles(out_shape[1], tile_size, geometry).window,
    )
