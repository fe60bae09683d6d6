"""The settings of a training run, typed once: the ``unet train`` options, :func:`train`'s
keywords and what the checkpoint records all come from :class:`TrainParameters`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from unet.errors import InvalidParameter
from unet.tiling import Geometry, Padding

Optimizer = Literal["sgd", "adam"]
OPTIMIZERS = ("sgd", "adam")
#: Learning rate per optimizer when none is given.
DEFAULT_LR = {"sgd": 0.01, "adam": 1e-3}
#: The default learning rate is multiplied by this when fine-tuning (--init).
FINE_TUNE_LR_SCALE = 0.1
#: Output pixels per tile side aimed at by the default training tile.
DEFAULT_TRAIN_OUTPUT = 128
#: The architecture when training from scratch (the paper's); with --init, the checkpoint's.
ARCHITECTURE_DEFAULTS: dict[str, Any] = {"base_channels": 64, "depth": 4, "padding": "valid"}


class TrainParameters(BaseModel):
    """How to train; every field has the ``unet train`` option of the same name.

    ``tile_size`` and ``lr`` left unset are resolved to their defaults when validated.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_channels: int | None = Field(
        None, ge=1, description="channels of the first level; default 64 (the paper) or --init's"
    )
    depth: int | None = Field(
        None, ge=1, description="number of poolings; default 4 (the paper) or --init's"
    )
    padding: Padding | None = Field(
        None, description="valid (the paper, exact tiling) or same; default valid or --init's"
    )
    init: str | None = Field(
        None,
        description="fine-tune: start from this checkpoint or bundled model (nuclei); "
        "architecture, classes and normalization come from it",
    )
    renormalize: bool = Field(
        False, description="with --init: mean and std from the training images, not the model's"
    )
    ignore_label: int | None = Field(
        None,
        ge=0,
        description="mask value of unannotated pixels: no loss, weight or score there, and "
        "tiles are drawn only where there are annotations",
    )
    label_name: str | None = Field(
        None,
        description="for a Zarr image holding labels/<name>: which one is the mask (default "
        "the only one)",
    )
    steps: int = Field(1000, ge=1, description="optimizer steps")
    batch_size: int = Field(4, ge=1, description="tiles per step")
    tile_size: int | None = Field(
        None, gt=0, description="input tile side (a valid size); default 128 output pixels"
    )
    lr: float | None = Field(
        None, gt=0, description="learning rate (SGD 0.01, Adam 0.001; a tenth of that with --init)"
    )
    optimizer: Optimizer = Field("sgd", description="sgd (momentum 0.99, the paper) or adam")
    momentum: float = Field(0.99, ge=0, lt=1, description="SGD momentum")
    seed: int = Field(0, ge=0, description="random seed (deterministic on CPU)")
    device: str = Field("cpu", description="cpu, cuda, cuda:N or auto")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="fp32, or bf16/fp16 autocast"
    )
    val_fraction: float = Field(0.2, ge=0, lt=1, description="share of images held out")
    val_every: int | None = Field(
        None, ge=1, description="steps between validations; default a tenth of the run"
    )
    w0: float = Field(10.0, ge=0, description="weight map: border weight w0")
    sigma: float = Field(5.0, gt=0, description="weight map: border width sigma, pixels")
    elastic: bool = Field(True, description="elastic deformations (flips and rotations always)")
    class_map: dict[int, int] | None = Field(
        None, description="mask value to class, e.g. 10:1,20:2; default every non-zero value is 1"
    )
    class_names: list[str] | None = Field(
        None, description="comma-separated class names, label 0 first"
    )
    save_every: int | None = Field(
        None, ge=1, description="steps between saved states (resume) and plots; default --val-every"
    )
    resume: bool = Field(
        True,
        description="continue an interrupted run from its saved state (CKPT.state) when the "
        "settings match; --no-resume starts over",
    )
    overwrite: bool = Field(False, description="replace an existing checkpoint")

    @field_validator("class_map", mode="before")
    @classmethod
    def _parse_class_map(cls, value: Any) -> Any:
        if isinstance(value, str):
            from unet.training.data import parse_class_map

            return parse_class_map(value)
        return value

    @field_validator("class_names", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @model_validator(mode="after")
    def _resolve_defaults(self) -> TrainParameters:
        if self.lr is None:
            # Fine-tuning takes smaller steps: at the full rate SGD with momentum 0.99 first
            # moves a trained model far from where it was (notes/issue-22.md, Measured).
            scale = FINE_TUNE_LR_SCALE if self.init is not None else 1.0
            object.__setattr__(self, "lr", DEFAULT_LR[self.optimizer] * scale)
        if self.init is None:
            for name, value in ARCHITECTURE_DEFAULTS.items():
                if getattr(self, name) is None:
                    object.__setattr__(self, name, value)
        if not self.resolved:
            return self  # --init: the architecture comes from the checkpoint (with_architecture)
        geometry = self.geometry
        if self.tile_size is None:
            side = geometry.valid_at_least(DEFAULT_TRAIN_OUTPUT + 2 * geometry.halo)
            object.__setattr__(self, "tile_size", side)
        geometry.output_size(self.tile_size)  # InvalidInputSize naming the nearest valid sides
        return self

    @property
    def resolved(self) -> bool:
        """Whether the architecture (and so the tile size) is known."""
        return all(getattr(self, name) is not None for name in ARCHITECTURE_DEFAULTS)

    @property
    def geometry(self) -> Geometry:
        if not self.resolved:
            raise InvalidParameter("the architecture is not known before --init is read")
        return Geometry(depth=self.depth, padding=self.padding)

    def with_architecture(self, architecture: dict[str, Any], source: str) -> TrainParameters:
        """These settings with the architecture of the initial checkpoint ``source``.

        Raises
        ------
        InvalidParameter
            An architecture option was given that differs from the checkpoint's.
        """
        from unet.config import validated

        for name in ARCHITECTURE_DEFAULTS:
            given, stored = getattr(self, name), architecture[name]
            if given is not None and given != stored:
                option = "--" + name.replace("_", "-")
                raise InvalidParameter(
                    f"{option} {given} differs from the initial model {source}'s {stored}: "
                    f"drop {option} (fine-tuning keeps the initial architecture)"
                )
        update = {name: architecture[name] for name in ARCHITECTURE_DEFAULTS}
        return validated(TrainParameters, {**self.model_dump(), **update})

    def recorded(self) -> dict[str, Any]:
        """What the checkpoint records of these settings (JSON-serialisable)."""
        exclude = {"overwrite", "device", "class_names", "resume"}
        data = self.model_dump(mode="json", exclude=exclude)
        if self.class_map is not None:
            data["class_map"] = sorted([int(k), int(v)] for k, v in self.class_map.items())
        return data
