"""The saved state of an unfinished training run, so that the same command resumes it.

``CKPT.state`` (beside the checkpoint ``CKPT``) is one safetensors file: the model's weights, the
optimizer's tensors and gradient scaler's, and as JSON metadata everything else the loop needs to
go on exactly where it stopped: the step, the losses and validation history, the sampler's random
generator state and a fingerprint of the settings and data. On the CPU with one thread count a
resumed run ends with bit-identical weights to an uninterrupted one. The file is replaced
atomically and removed when the run finishes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unet.errors import CheckpointError, FingerprintMismatch

if TYPE_CHECKING:
    import torch

    from unet.network.model import UNet

METADATA_KEY = "unet-train-state"


def state_path(checkpoint: str | os.PathLike[str]) -> Path:
    """Where the state of the run writing ``checkpoint`` is kept: ``<checkpoint>.state``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + ".state")


@dataclass
class Progress:
    """Where a run stands (JSON-serialisable).

    Attributes
    ----------
    step: optimizer steps done
    losses: training loss of every step done
    history: validation steps and their Dice: ``{"step": [...], "val_dice": [...]}``
    seconds: training time so far, over every resumed part
    resumed: steps at which the run was resumed
    """

    step: int = 0
    losses: list[float] = field(default_factory=list)
    history: dict[str, list] = field(default_factory=lambda: {"step": [], "val_dice": []})
    seconds: float = 0.0
    resumed: list[int] = field(default_factory=list)


def save_state(
    path: Path,
    fingerprint: dict[str, Any],
    progress: Progress,
    model: UNet,
    optimiser: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    rng_state: dict[str, Any],
) -> None:
    """Write the state of a run atomically to ``path``."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    values: dict[str, dict[str, Any]] = {}
    for index, entries in optimiser.state_dict()["state"].items():
        for name, value in entries.items():
            if hasattr(value, "detach"):
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                values.setdefault(str(index), {})[name] = value
    document = {
        "fingerprint": fingerprint,
        "progress": progress.__dict__,
        "optimizer_values": values,
        "scaler": scaler.state_dict(),
        "rng": rng_state,
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(document)})
    os.replace(tmp, path)


def load_state(
    path: Path,
    fingerprint: dict[str, Any],
    model: UNet,
    optimiser: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> tuple[Progress, dict[str, Any]]:
    """Restore model, optimizer and scaler from ``path``; returns the progress and the sampler's
    random generator state.

    Raises
    ------
    FingerprintMismatch
        The state comes from other settings or data.
    CheckpointError
        The file is not a state written by :func:`save_state`.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as handle:
            document = json.loads((handle.metadata() or {})[METADATA_KEY])
        tensors = load_file(str(path))
    except (SafetensorError, KeyError, ValueError, OSError) as error:
        raise CheckpointError(
            f"{path} is not a readable training state ({error}): delete it or pass --no-resume"
        ) from None
    if document["fingerprint"] != fingerprint:
        changed = sorted(
            key
            for key in fingerprint.keys() | document["fingerprint"].keys()
            if fingerprint.get(key) != document["fingerprint"].get(key)
        )
        raise FingerprintMismatch(
            f"{path} holds an unfinished run with other {', '.join(changed)}: repeat its "
            "command to resume it, or pass --no-resume to start over"
        )
    model.load_state_dict(
        {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    )
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, entries in document["optimizer_values"].items():
        state.setdefault(int(index), {}).update(entries)
    optimiser.load_state_dict(
        {"state": state, "param_groups": optimiser.state_dict()["param_groups"]}
    )
    if document["scaler"]:
        scaler.load_state_dict(document["scaler"])
    return Progress(**document["progress"]), document["rng"]
