"""Small checkpoints, Zarr images and reference masks for the tests that run the engine."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import zarr

from unet.network.checkpoint import load_checkpoint, save_checkpoint
from unet.predict.window import predict_array

#: The ``unet`` command of this environment, as users run it.
UNET = str(Path(sys.executable).with_name("unet"))


def make_model(seed: int = 0, **config):
    """A small random U-Net (base 4 channels unless given) with reproducible weights."""
    import torch

    from unet.network.model import UNet

    torch.manual_seed(seed)
    config.setdefault("base_channels", 4)
    model = UNet(**config).eval()
    # PyTorch's default init shrinks activations level by level, so the deep levels would barely
    # reach the logits and a misaligned pooling grid would hide below the tolerance. He init keeps
    # every level's signal, which makes the tiled == whole tests sensitive.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.uniform_(-0.1, 0.1)
            elif param.ndim == 4:
                torch.nn.init.kaiming_normal_(param, nonlinearity="relu")
    return model


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def untracked() -> dict[str, str]:
    """The environment of a user without a Prefect server (no API URL, no Prefect profile)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PREFECT_PROFILES_PATH": "/nonexistent.toml"}
    env.pop("PREFECT_API_URL", None)
    return env


def run_main(monkeypatch, capsys, *arguments: str, note: bool = False) -> tuple[int, list[str]]:
    """``unet ARGUMENTS`` in this process: (exit status, the lines on stderr; the untracked
    run's note only with ``note``)."""
    import sys

    from unet.cli import main

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(sys, "argv", ["unet", *arguments])
    try:
        main()
        code = 0
    except SystemExit as exit:
        code = exit.code
    lines = [
        line
        for line in capsys.readouterr().err.splitlines()
        if line.strip() and (note or not line.startswith("note: no Prefect server"))
    ]
    return code, lines


def write_checkpoint(path, **config):
    model = make_model(**config)
    channels = config.get("in_channels", 1)
    return str(
        save_checkpoint(
            path,
            model,
            mean=[100.0] * channels,
            std=[40.0] * channels,
            class_names=None
            if config.get("num_classes", 2) <= 2
            else [f"c{i}" for i in range(config["num_classes"])],
        )
    )


def write_image(path, shape, chunks, seed=0, dtype="uint8"):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 255, size=shape).astype(dtype)
    array = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype=dtype)
    array[...] = data
    return data


def reference_mask(checkpoint_path, raw_cyx, tile_size):
    """argmax of predict_array on the same normalized image, and where that argmax is a near tie."""
    checkpoint = load_checkpoint(checkpoint_path)
    logits = predict_array(checkpoint.model, checkpoint.normalize(raw_cyx), tile_size=tile_size)
    ordered = np.sort(logits, axis=0)
    near_tie = (ordered[-1] - ordered[-2]) < 1e-4
    return np.argmax(logits, axis=0).astype(np.uint8), near_tie


def assert_same_mask(mask, expected, near_tie):
    differ = mask != expected
    assert not (differ & ~near_tie).any(), f"{differ.sum()} pixels differ away from ties"
    assert near_tie.mean() < 1e-3


def stop_group(process: subprocess.Popen, seconds: float) -> None:
    """Stop ``process`` and its children (started with ``start_new_session=True``): SIGTERM,
    then SIGKILL after ``seconds``."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def kill_segment_when_marked(arguments: list[str], output, marks: int, seconds: float) -> None:
    """Run ``unet segment *arguments`` (whose output is ``output``) as users do, untracked, and
    SIGKILL it and its process group once its ledger marks ``marks`` chunks (or after
    ``seconds``, or when it ends first)."""
    import time

    process = subprocess.Popen(
        [UNET, "segment", *arguments],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=untracked(),
        start_new_session=True,
    )
    ledger = Path(output) / "_unet_ledger" / "c"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        if ledger.exists() and sum(1 for p in ledger.rglob("*") if p.is_file()) >= marks:
            break
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
