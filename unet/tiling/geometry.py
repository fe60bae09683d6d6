"""Sizes of a U-Net: halo, valid input sides, and the pooling grid tiles must sit on.

Coordinates. An image has ``n`` pixels along an axis, indexed ``0 .. n-1``. The network sees the
image mirror-padded by ``halo`` pixels in front, so *padded* coordinate ``p`` holds image
coordinate ``p - halo``. A tile whose input window starts at padded coordinate ``o`` produces the
output pixels ``o .. o + output_side - 1`` in image coordinates.

Why tiles are exact. With unpadded convolutions an output pixel depends only on the input inside
its window; max-pooling also needs the window to sit on the whole image's pooling grid, so tile
origins are multiples of ``2**depth``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from unet.errors import InvalidInputSize, InvalidTileSize

Padding = Literal["valid", "same"]


#: Context kept around each tile of a "same"-padding model, in units of ``2**depth``. Zero-padded
#: convolutions see the tile border, so seams are avoided by cropping this margin (approximate).
SAME_MARGIN_UNITS = 2

#: The deepest network described: depth 16 already loses 393,212 pixels per side (valid).
MAX_DEPTH = 16


@dataclass(frozen=True)
class Geometry:
    """Sizes of a U-Net of ``depth`` poolings with ``"valid"`` or ``"same"`` convolutions.

    For ``"valid"`` (the paper) two unpadded 3x3 convolutions per level shrink each side by 4 at
    that level's scale, so the input loses ``halo = 6 * 2**depth - 4`` pixels per side
    (92 for depth 4: 572 -> 388). Valid input sides are ``smallest + k * 2**depth``.
    For ``"same"`` the output equals the input and the side must be a multiple of ``2**depth``.
    """

    depth: int = 4
    padding: Padding = "valid"

    def __post_init__(self) -> None:
        if not 0 <= self.depth <= MAX_DEPTH:
            raise InvalidInputSize(f"depth must be 0 to {MAX_DEPTH}, got {self.depth}")
        if self.padding not in ("valid", "same"):
            raise InvalidInputSize(f"padding must be 'valid' or 'same', got {self.padding!r}")

    @property
    def align(self) -> int:
        """Pooling period ``2**depth``: tile origins and size steps are multiples of it."""
        return 2**self.depth

    @property
    def halo(self) -> int:
        """Input pixels consumed per side by the network (0 for ``"same"``)."""
        if self.padding == "same":
            return 0
        return 6 * self.align - 4

    @property
    def context(self) -> int:
        """Pixels of input context per side that tiling keeps: ``halo`` or the same-mode margin."""
        if self.padding == "same":
            return SAME_MARGIN_UNITS * self.align
        return self.halo

    @property
    def smallest_input(self) -> int:
        """Smallest valid input side."""
        if self.padding == "same":
            return self.align
        # Bottom features b >= 4 keep every decoder level positive (b >= 3 for depth 1).
        bottom = 4 if self.depth >= 2 else (3 if self.depth == 1 else 1)
        return self.align * (bottom + 4) + 4 * (self.align - 1)

    def is_valid(self, n: int) -> bool:
        """Whether an input side ``n`` gives an exact output."""
        return n >= self.smallest_input and (n - self.smallest_input) % self.align == 0

    def valid_at_least(self, n: int) -> int:
        """Smallest valid input side ``>= n``."""
        if n <= self.smallest_input:
            return self.smallest_input
        steps = -(-(n - self.smallest_input) // self.align)
        return self.smallest_input + steps * self.align

    def valid_at_most(self, n: int) -> int | None:
        """Largest valid input side ``<= n``, or None if there is none."""
        if n < self.smallest_input:
            return None
        return self.smallest_input + (n - self.smallest_input) // self.align * self.align

    def nearest_valid(self, n: int) -> tuple[int, ...]:
        """The valid sides just below and above ``n`` (one of them when n is below the smallest)."""
        lower = self.valid_at_most(n)
        upper = self.valid_at_least(n + 1) if lower == n else self.valid_at_least(n)
        return tuple(v for v in (lower, upper) if v is not None)

    def output_size(self, n: int) -> int:
        """Output side for an input side ``n``.

        Raises
        ------
        InvalidInputSize
            When ``n`` is not a valid input side; the message names the nearest valid ones.
        """
        if not self.is_valid(n):
            near = " or ".join(str(v) for v in self.nearest_valid(n))
            kind = (
                f"multiple of {self.align}"
                if self.padding == "same"
                else (f"{self.smallest_input} + {self.align}k")
            )
            raise InvalidInputSize(
                f"input side {n} is not valid for a depth-{self.depth} {self.padding} U-Net "
                f"(valid sides are {kind}): use {near}"
            )
        return n - 2 * self.halo

    @property
    def smallest_tile(self) -> int:
        """Smallest tile side for tiled inference: a valid input side keeping at least
        ``2**depth`` output pixels after cropping the context, so that aligned tiles advance."""
        return self.valid_at_least(2 * self.context + self.align)

    def check_tile_size(self, tile_size: int) -> int:
        """Validate a tile side for tiled inference (see :attr:`smallest_tile`) and return it."""
        smallest = self.smallest_tile
        if not self.is_valid(tile_size) or tile_size < smallest:
            lower = self.valid_at_most(tile_size)
            options = [v for v in (lower, self.valid_at_least(tile_size + 1)) if v]
            options = [v for v in options if v >= smallest] or [smallest]
            near = " or ".join(str(v) for v in dict.fromkeys(options))
            raise InvalidTileSize(
                f"tile size {tile_size} is not valid for a depth-{self.depth} {self.padding} "
                f"U-Net (at least {smallest}, in steps of {self.align}): use {near}"
            )
        return tile_size
