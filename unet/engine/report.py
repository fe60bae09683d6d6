"""What a run did: the report ``--report`` writes, and what a chunk that failed tells the driver."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

ProgressCallback = Callable[[int, int], None]


@dataclass
class SegmentReport:
    """What a run did; ``to_dict`` gives the JSON written by ``--report``."""

    input: str
    output: str
    shape: tuple[int, int, int]
    chunks_total: int
    chunks_computed: int = 0
    chunks_skipped: int = 0
    chunks_resumed: int = 0
    chunks_failed: list[list[int]] = field(default_factory=list)
    #: Stored chunks of the input absent from its store, read as its fill value (a store that
    #: unet ingest did not write; in one it did, they fail the chunks that need them instead).
    input_chunks_missing: int = 0
    seconds: float = 0.0
    class_names: list[str] = field(default_factory=list)
    #: Pixels per class of the chunks counted this run; no-data pixels are left out.
    class_pixels: list[int] = field(default_factory=list)
    #: Pixels of the chunks counted this run that are no data (label ``MASK_NODATA``), with a
    #: no-data value; 0 without.
    nodata_pixels: int = 0
    #: Objects (4-connected regions) per foreground class, with ``instances``; None without.
    objects_per_class: dict[str, int] | None = None

    @property
    def megapixels(self) -> float:
        return self.shape[1] * self.shape[2] / 1e6

    @property
    def megapixels_per_second(self) -> float:
        return self.megapixels / self.seconds if self.seconds > 0 else 0.0

    @property
    def class_fractions(self) -> dict[str, float]:
        """Fraction of the pixels of the chunks counted this run, per class."""
        total = sum(self.class_pixels)
        return {
            name: (count / total if total else 0.0)
            for name, count in zip(self.class_names, self.class_pixels, strict=False)
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        from unet.sizes import shape_label

        data.update(
            size=shape_label(self.shape),
            megapixels=round(self.megapixels, 6),
            megapixels_per_second=round(self.megapixels_per_second, 6),
            seconds=round(self.seconds, 6),
            class_fractions=self.class_fractions,
        )
        return data


@dataclass(frozen=True)
class ChunkFailure:
    """A chunk whose input could not be read, even after retries: reported, never marked done."""

    index: tuple[int, int]
    reason: str
