"""Checkpoints: one safetensors file with the weights, the architecture and the normalization.

Never pickle: ``torch.load`` on a file from elsewhere can run arbitrary code. A checkpoint holds
the state dict as tensors and, in the safetensors metadata under the key ``"unet"``, a JSON
document with the architecture config, per-channel ``mean``/``std``, class names and colours and
free-form metadata. Normalization is ``(raw - mean[c]) / std[c]`` in float32, fixed at training
time and never guessed from the data.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unet.errors import CheckpointError

if TYPE_CHECKING:
    from unet.network.model import UNet

FORMAT = "unet-tiles/1"
METADATA_KEY = "unet"
#: Checkpoints shipped inside the package, addressable by name (``--model nuclei``).
BUNDLED_DIR = Path(__file__).parent.parent / "models"

_DEFAULT_COLOURS = [
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
]


def default_class_names(num_classes: int) -> list[str]:
    """``background``/``foreground`` for 1 or 2 classes, ``class_<i>`` otherwise."""
    if num_classes <= 2:
        return ["background", "foreground"]
    return ["background"] + [f"class_{i}" for i in range(1, num_classes)]


def default_colours(count: int) -> list[tuple[int, int, int]]:
    """Distinct RGB colours, background black."""
    return [_DEFAULT_COLOURS[i % len(_DEFAULT_COLOURS)] for i in range(count)]


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes
    ----------
    model: the U-Net in eval mode on the requested device
    mean, std: float32 (in_channels,) normalization of the raw image
    class_names: one name per label value (label 0 is background)
    colours: one RGB triple per label value
    metadata: free-form training metadata
    digest: sha256 of the file, identifies the checkpoint in run fingerprints
    """

    model: UNet
    mean: np.ndarray
    std: np.ndarray
    class_names: list[str]
    colours: list[tuple[int, int, int]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    digest: str = ""
    path: str = ""

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        """``(raw - mean[c]) / std[c]`` for a ``(C, H, W)`` array of any real dtype, as float32."""
        image = raw.astype(np.float32, copy=True)
        image -= self.mean[:, None, None]
        image /= self.std[:, None, None]
        return image


def save_checkpoint(
    path: str | os.PathLike[str],
    model: UNet,
    *,
    mean: float | list[float] | np.ndarray,
    std: float | list[float] | np.ndarray,
    class_names: list[str] | None = None,
    colours: list[tuple[int, int, int]] | None = None,
    **metadata: Any,
) -> Path:
    """Write ``model`` with its normalization to one safetensors file.

    Parameters
    ----------
    mean, std: per-channel normalization (a scalar is used for every channel); std must be > 0
    class_names: one name per label value; defaults to background/foreground
    metadata: JSON-serialisable extras (training settings, scores)
    """
    from safetensors.torch import save_file

    channels = model.in_channels
    mean_arr = _per_channel(mean, channels, "mean")
    std_arr = _per_channel(std, channels, "std")
    if np.any(std_arr <= 0) or not np.all(np.isfinite(std_arr)):
        raise CheckpointError(f"std must be finite and > 0 for every channel, got {std_arr}")
    labels = max(model.num_classes, 2)
    names = list(class_names) if class_names else default_class_names(model.num_classes)
    if len(names) != labels:
        raise CheckpointError(f"{len(names)} class names given for {labels} labels: give {labels}")
    header = {
        "format": FORMAT,
        "architecture": model.config,
        "mean": mean_arr.tolist(),
        "std": std_arr.tolist(),
        "class_names": names,
        "colours": [list(c) for c in (colours or default_colours(labels))],
        "metadata": metadata,
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={METADATA_KEY: json.dumps(header)})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # safetensors creates 0600; a shared model must stay readable
    os.replace(tmp, path)
    return path


def resolve_checkpoint(name_or_path: str | os.PathLike[str]) -> Path:
    """A path to an existing file, or the name of a bundled model (``nuclei``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = BUNDLED_DIR / f"{name_or_path}.safetensors"
    if bundled.is_file():
        return bundled
    names = sorted(p.stem for p in BUNDLED_DIR.glob("*.safetensors"))
    hint = f" or a bundled model name ({', '.join(names)})" if names else ""
    raise CheckpointError(
        f"checkpoint {str(name_or_path)!r} not found: give a .safetensors file{hint}"
    )


def load_checkpoint(path: str | os.PathLike[str], device: str = "cpu") -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint` (or a bundled model name).

    Raises
    ------
    CheckpointError
        For a pickle or zip (``torch.save``) file, a corrupt file, a safetensors file without this
        project's metadata, or weights that do not fit the stored architecture.
    """
    from safetensors import SafetensorError, safe_open

    from unet.network.model import UNet

    file = resolve_checkpoint(path)
    data = file.read_bytes()
    _refuse_pickle(file, data)
    try:
        from safetensors.torch import load

        state = load(data)
        with safe_open(str(file), framework="pt") as handle:
            header_text = (handle.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, ValueError, OSError) as error:
        raise CheckpointError(
            f"{file} is not a readable safetensors file ({error}): re-save it with unet train "
            "or save_checkpoint"
        ) from None
    if header_text is None:
        raise CheckpointError(
            f"{file} is a safetensors file without unet metadata: save it with save_checkpoint"
        )
    try:
        header = json.loads(header_text)
        config = _architecture(file, header)
        _check_size(file, config, state)
        model = UNet(**config)
        mean = np.asarray(header["mean"], dtype=np.float32)
        std = np.asarray(header["std"], dtype=np.float32)
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{file} has corrupt unet metadata ({error})") from None
    class_names, colours, metadata = _labels(file, header, model.num_classes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0:2]
        raise CheckpointError(
            f"{file}: weights do not fit the stored architecture {config} ({' '.join(first)})"
        ) from None
    if mean.shape != (model.in_channels,) or std.shape != (model.in_channels,):
        raise CheckpointError(f"{file}: mean/std must have {model.in_channels} values")
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise CheckpointError(
            f"{file}: its normalization (mean {mean.tolist()}, std {std.tolist()}) is not finite "
            "and positive: re-save it with the training data's mean and std"
        )
    _check_finite_weights(file, state)
    model.eval().to(device)
    return Checkpoint(
        model=model,
        mean=mean,
        std=std,
        class_names=class_names,
        colours=colours,
        metadata=metadata,
        digest=hashlib.sha256(data).hexdigest(),
        path=str(file),
    )


#: The architecture keys of a checkpoint and their types.
_ARCHITECTURE = {
    "in_channels": int,
    "num_classes": int,
    "base_channels": int,
    "depth": int,
    "padding": str,
}


def _architecture(file: Path, header: Any) -> dict[str, Any]:
    """The header's architecture, each value of its type and within range."""
    config = header.get("architecture") if isinstance(header, dict) else None
    if not isinstance(config, dict) or set(config) != set(_ARCHITECTURE):
        raise CheckpointError(
            f"{file} has corrupt unet metadata: the architecture must name exactly "
            f"{', '.join(_ARCHITECTURE)}"
        )
    for key, kind in _ARCHITECTURE.items():
        value = config[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CheckpointError(
                f"{file} has corrupt unet metadata: architecture {key} is {value!r}, not "
                f"{'an integer' if kind is int else 'a string'}"
            )
    from unet.tiling.geometry import MAX_DEPTH

    if config["padding"] not in ("valid", "same") or not 1 <= config["depth"] <= MAX_DEPTH:
        raise CheckpointError(
            f"{file} has corrupt unet metadata: padding {config['padding']!r} (valid or same), "
            f"depth {config['depth']} (1 to {MAX_DEPTH})"
        )
    if min(config["in_channels"], config["num_classes"], config["base_channels"]) < 1:
        raise CheckpointError(f"{file} has corrupt unet metadata: channel counts below 1")
    return config


def _check_size(file: Path, config: dict[str, Any], state: dict[str, Any]) -> None:
    """Refuse an architecture whose parameters the file does not hold, before building it: a
    header claiming base_channels 100000 would otherwise allocate hundreds of GB."""
    from unet.network.model import parameter_count

    expected = parameter_count(**config)
    stored = sum(int(tensor.numel()) for tensor in state.values())
    if expected != stored:
        raise CheckpointError(
            f"{file}: weights do not fit the stored architecture {config}, which has "
            f"{expected:,} parameters ({expected * 4 / 2**30:,.1f} GiB in fp32) where the file "
            f"holds {stored:,}: re-save it with save_checkpoint"
        )


def _labels(
    file: Path, header: dict[str, Any], num_classes: int
) -> tuple[list[str], list[tuple[int, int, int]], dict[str, Any]]:
    """Class names, RGB colours and metadata of the header, checked (defaults where absent)."""
    labels = max(num_classes, 2)
    names = header.get("class_names") or default_class_names(num_classes)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{file} has corrupt unet metadata: class_names must be strings")
    colours = header.get("colours") or default_colours(labels)
    valid = isinstance(colours, list) and all(
        isinstance(c, list | tuple)
        and len(c) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in c)
        for c in colours
    )
    if not valid:
        raise CheckpointError(
            f"{file} has corrupt unet metadata: colours must be [r, g, b] lists of 0..255 integers"
        )
    metadata = header.get("metadata", {})
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{file} has corrupt unet metadata: metadata must be an object")
    return list(names), [tuple(c) for c in colours], dict(metadata)


def _check_finite_weights(file: Path, state: dict[str, Any]) -> None:
    """Refuse weights holding NaN or infinite values: such a model gives a mask, and a wrong one
    (e.g. all background), without a word."""
    import torch

    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"{file}: weight {name} holds NaN or infinite values (the training diverged): "
                "use another checkpoint, or train again with a lower learning rate"
            )


def _per_channel(value: float | list[float] | np.ndarray, channels: int, name: str) -> np.ndarray:
    array = np.atleast_1d(np.asarray(value, dtype=np.float32))
    if array.size == 1:
        array = np.repeat(array, channels)
    if array.shape != (channels,):
        raise CheckpointError(f"{name} needs 1 or {channels} values, got {array.size}")
    return array


def _refuse_pickle(file: Path, data: bytes) -> None:
    """Refuse pickle and zip (``torch.save``) files before anything parses them."""
    header_length = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if 0 < header_length <= len(data) - 8 and data[8:9] == b"{":
        return  # a safetensors header: 8-byte little-endian length, then JSON
    if data[:2] == b"PK" or data[:1] == b"\x80":
        raise CheckpointError(
            f"{file} is a pickle (torch.save) file, which can run code when loaded: "
            "convert it once, in a trusted environment, with save_checkpoint to .safetensors"
        )
