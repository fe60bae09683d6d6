"""Fine-tuning on a real annotated fluorescence image: the quality targets of issue 22.

The image is ``img2d.tif`` / ``mask2d.tif`` that the ``stardist`` wheel ships as test data (a
512 x 512 fluorescence nuclei image with instance labels from the 2018 Data Science Bowl,
Caicedo et al., Nature Methods 16, 2019). With ``--data`` unset the script fetches the wheel
with ``pip download --no-deps`` into a temporary folder and reads the two files out of it; the
product itself never downloads anything.

The image is cut into two halves (columns). The model is fine-tuned from ``--init`` (the bundled
``nuclei``) on one half and scored on the other, three ways:

- ``bundled``: the initial model as it is;
- ``full``: fine-tuned on every labelled pixel of the training half;
- ``third``: fine-tuned on a third of them (random 32 x 32 blocks), the rest set to the ignore
  label.

Foreground Dice on the test half (predicted alone, mirror-padded at the cut as any image is).
Fine-tuning uses Adam at the fine-tuning default rate (1e-4), whole 220-pixel tiles and no
elastic deformation (a few dozen steps on one image; deformations only slow the adaptation).
The wall time of each training is reported with the machine's load average: on a shared machine
the time budget is wall time under that load. Without ``--steps``, runs of 2 and 6 steps first
measure the time per step and the fixed cost, and the runs take as many steps as fit in
``--budget`` seconds (the load can change between calibration and run: see the wall times).

    .venv/bin/python benchmarks/real_finetune.py --budget 120 --out benchmarks/results/real.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STARDIST = "stardist==0.9.2"
FILES = ("stardist/data/images/img2d.tif", "stardist/data/images/mask2d.tif")
IGNORE = 65535


def fetch(folder: Path) -> Path:
    """Download the stardist wheel (no dependencies) and extract the two test files."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            str(folder),
            STARDIST,
        ],
        check=True,
    )
    wheel = next(folder.glob("stardist-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        for name in FILES:
            (folder / Path(name).name).write_bytes(archive.read(name))
    return folder


def write_half(root: Path, image: np.ndarray, mask: np.ndarray) -> Path:
    import tifffile

    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(root / "images" / "train.tif", image)
    tifffile.imwrite(root / "masks" / "train.tif", mask)
    return root


def third_of(mask: np.ndarray, seed: int, block: int = 32) -> np.ndarray:
    """The mask with two thirds of its ``block`` x ``block`` blocks set to the ignore label."""
    rng = np.random.default_rng(seed)
    rows, cols = -(-mask.shape[0] // block), -(-mask.shape[1] // block)
    keep = np.zeros(rows * cols, bool)
    keep[rng.permutation(rows * cols)[: round(rows * cols / 3)]] = True
    kept = np.kron(keep.reshape(rows, cols), np.ones((block, block), bool))
    kept = kept[: mask.shape[0], : mask.shape[1]]
    return np.where(kept, mask, IGNORE).astype(np.uint16)


def dice(checkpoint, image: np.ndarray, truth: np.ndarray) -> float:
    from unet import predict_array

    logits = predict_array(checkpoint.model, checkpoint.normalize(image[None]))
    pred, gt = logits.argmax(axis=0) > 0, truth > 0
    return float(2 * np.sum(pred & gt) / (pred.sum() + gt.sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="folder holding img2d.tif and mask2d.tif")
    parser.add_argument("--init", default="nuclei")
    parser.add_argument("--steps", type=int, help="default: as many as fit in --budget")
    parser.add_argument("--budget", type=float, default=120.0, help="seconds of training")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--tile-size", type=int, default=220)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--lr", type=float, help="default: the fine-tuning default")
    parser.add_argument("--elastic", action="store_true")
    parser.add_argument("--train-half", choices=("left", "right"), default="left")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the results here (JSON)")
    args = parser.parse_args()

    import tifffile
    import torch

    from unet import load_checkpoint, train

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="unet-real-"))
    data = args.data or fetch(work / "stardist")
    image = tifffile.imread(data / "img2d.tif")
    mask = tifffile.imread(data / "mask2d.tif")
    half = image.shape[1] // 2
    left, right = (slice(None), slice(0, half)), (slice(None), slice(half, None))
    train_part, test_part = (left, right) if args.train_half == "left" else (right, left)

    results = {
        "image": f"{STARDIST} {FILES[0]} ({image.shape[0]}x{image.shape[1]} {image.dtype})",
        "train_half": args.train_half,
        "bundled_dice": round(
            dice(load_checkpoint(args.init), image[test_part], mask[test_part]), 4
        ),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
    }
    runs = {
        "full": mask[train_part],
        "third": third_of(mask[train_part], args.seed),
    }
    options = dict(
        init=args.init,
        batch_size=args.batch_size,
        tile_size=args.tile_size,
        optimizer=args.optimizer,
        elastic=args.elastic,
        seed=args.seed,
        val_fraction=0,
        progress=False,
        **({} if args.lr is None else {"lr": args.lr}),
    )
    steps = args.steps
    if steps is None:
        # Two short runs: their difference is the time of the extra steps without the fixed
        # cost of reading the data and writing the checkpoint, which the budget also pays.
        root = write_half(work / "calibrate", image[train_part], mask[train_part])
        seconds = []
        for count in (2, 6):
            started = time.perf_counter()
            train(root, work / f"calibrate{count}.safetensors", steps=count, **options)
            seconds.append(time.perf_counter() - started)
        per_step = (seconds[1] - seconds[0]) / 4
        fixed = max(seconds[0] - 2 * per_step, 0.0)
        steps = max(int((args.budget - fixed) / per_step), 1)
        results["calibration"] = {
            "seconds_per_step": round(per_step, 2),
            "fixed_seconds": round(fixed, 1),
            "steps": steps,
        }
        print("calibration", results["calibration"], flush=True)
    for name, labels in runs.items():
        root = write_half(work / name, image[train_part], labels)
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        result = train(
            root,
            work / f"{name}.safetensors",
            steps=steps,
            ignore_label=IGNORE if name == "third" else None,
            **options,
        )
        seconds = time.perf_counter() - started
        checkpoint = load_checkpoint(result.path)
        results[name] = {
            "dice": round(dice(checkpoint, image[test_part], mask[test_part]), 4),
            "wall_seconds": round(seconds, 1),
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "annotated_pixels": checkpoint.metadata["annotated_pixels"],
            "steps": steps,
            "lr": checkpoint.metadata["lr"],
            "final_loss": round(result.final_loss, 4),
        }
        print(name, json.dumps(results[name]), flush=True)
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
