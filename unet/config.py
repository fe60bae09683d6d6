"""The parameters of a segmentation run, typed once.

The CLI options, the Prefect flow parameters and ``pipelines.yaml`` all validate against
:class:`SegmentParameters`; the run fingerprint is computed from the fields that change the mask.
"""

from __future__ import annotations

import math
import re
import typing
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from unet.errors import InvalidParameter, UNetError

Model = TypeVar("Model", bound=BaseModel)

#: A label image's name under ``IMAGE.zarr/labels/``: one path segment.
_LABEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

#: Where to run: a fixed set, so that the CLI and the Prefect parameter form offer choices. Eight
#: GPUs can be named one by one; with more, ``cuda`` uses them all (one worker per GPU).
Device = Literal[
    "auto", "cpu", "cuda", "cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:4", "cuda:5", "cuda:6",
    "cuda:7",
]  # fmt: skip
DEVICES: tuple[str, ...] = typing.get_args(Device)
Precision = Literal["fp32", "bf16", "fp16", "auto"]


class SegmentParameters(BaseModel):
    """How to segment an image; every field has the CLI option of the same name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field("nuclei", description="checkpoint path (.safetensors) or bundled model name")
    tile_size: int | None = Field(
        None, gt=0, description="input side of the model tiles (a valid size); default per model"
    )
    batch_size: int = Field(4, ge=1, le=1024, description="tiles per forward pass")
    device: Device = Field(
        "auto", description="auto (a GPU where there is one), cpu, cuda (every GPU) or cuda:N"
    )
    precision: Precision = Field(
        "fp32", description="fp32, bf16/fp16 autocast, or auto (bf16 where the hardware has it)"
    )
    workers: int | None = Field(
        None,
        ge=1,
        description="LocalCluster worker processes (default: one per GPU, or one on CPU)",
    )
    scheduler: str | None = Field(
        None, description="address of an existing Dask scheduler, e.g. tcp://127.0.0.1:8786"
    )
    skip_background: bool = Field(False, description="give label 0 to chunks without tissue")
    nodata: float | None = Field(
        None,
        description="pixel value meaning 'no data': such pixels get label 0, such chunks are skipped",
    )
    probabilities: bool = Field(False, description="also write a float16 softmax array")
    channels_last: bool = Field(False, description="the input array is (Y, X, C)")
    instances: bool = Field(
        False,
        description="also label every object (4-connected, per class) with an id unique in the "
        "image, into MASK-instances.zarr, with an object table MASK-objects.parquet",
    )
    overwrite: bool = Field(False, description="replace an output written with other settings")
    labels: str | None = Field(
        None,
        description="write the mask into the OME-Zarr image as IMAGE.zarr/labels/NAME "
        "(OME-NGFF labels) instead of to OUTPUT",
    )

    @field_validator("device", mode="before")
    @classmethod
    def _known_device(cls, value: Any) -> Any:
        if value in DEVICES:
            return value
        raise ValueError(
            f"unknown device {value!r}: use auto, cpu, cuda or cuda:0 to {DEVICES[-1]}"
        )

    @field_validator("labels")
    @classmethod
    def _label_name(cls, value: str | None) -> str | None:
        return value if value is None else check_label_name(value)

    @field_validator("scheduler")
    @classmethod
    def _scheduler_address(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value:
            raise ValueError(f"scheduler {value!r} needs a protocol: e.g. tcp://127.0.0.1:8786")
        return value

    def result_fields(self, tile_size: int) -> dict[str, object]:
        """The fields that change the output, with the tile size resolved (for the fingerprint).

        ``instances`` enters only when set, so outputs written before it existed keep their
        fingerprint.
        """
        fields: dict[str, object] = {
            "tile_size": tile_size,
            "precision": self.precision,
            "skip_background": self.skip_background,
            "nodata": json_number(self.nodata),
            "probabilities": self.probabilities,
            "channels_last": self.channels_last,
        }
        if self.instances:
            fields["instances"] = True
        return fields


def json_number(value: float | None) -> float | str | None:
    """``value`` as strict JSON takes it: NaN and the infinities, which ``json.dumps`` would
    write as bare ``NaN``/``Infinity`` (invalid JSON that strict parsers refuse), as the strings
    ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (Zarr v3's spelling; ``float()`` reads them)."""
    if value is None or math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def check_label_name(name: str) -> str:
    """``name`` when it can name a label image under ``IMAGE.zarr/labels/`` (one path segment of
    letters, digits, ``.``, ``_`` and ``-``, not starting with ``.``), else
    :class:`~unet.errors.InvalidParameter`."""
    if not isinstance(name, str) or not _LABEL_NAME.fullmatch(name) or name.endswith(".lock"):
        raise InvalidParameter(
            f"label name {name!r} cannot name a label image: use letters, digits, '.', '_' and "
            "'-' (at most 128, not starting with '.'), e.g. nuclei"
        )
    return name


def validated(model: type[Model], values: dict[str, Any]) -> Model:
    """``model(**values)``, with a validation failure raised as this project's error: the
    :class:`~unet.errors.UNetError` a validator raised (e.g. ``InvalidInputSize`` naming the
    nearest valid sizes), else :class:`~unet.errors.InvalidParameter` naming every field that is
    wrong and what was expected, in one line."""
    try:
        return model(**values)
    except ValidationError as error:
        for item in error.errors():
            cause = (item.get("ctx") or {}).get("error")
            if isinstance(cause, UNetError):
                raise cause from None
        raise InvalidParameter(describe(error)) from None


def describe(error: ValidationError) -> str:
    """Every problem of ``error`` on one line: ``field: what was expected; ...``."""
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "value"
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{where.replace('_', ' ')}: {message}")
    return "; ".join(parts)
