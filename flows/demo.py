"""``make demo``: generate a slide and a folder of small images, segment them, show the result.

Everything is generated (no download): an 8192x8192 fluorescent-nuclei slide written chunk by chunk
into OME-Zarr, and small PNG/TIFF images that the folder run ingests first. They are segmented
as ``unet segment`` does (:func:`flows.runner.run_segment`: the ``segment_folder`` flow when a
Prefect server is configured, else the same steps untracked) with the bundled ``nuclei`` model;
the ground truth of the generated images scores the masks.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

SLIDE_SIDE = 8192
SMALL_IMAGES = {"cells-a.png": (512, 640), "cells-b.tif": (700, 500), "cells-c.png": (384, 384)}


#: The file that marks a folder as the demo's own: its images/, truth/ and masks/ are replaced.
DEMO_MARKER = ".unet-demo"


def _check_own_folders(output: Path, folders: tuple[Path, ...]) -> None:
    """Refuse to replace folders the demo did not write (no marker beside them)."""
    from unet.errors import OutputExists

    present = [folder.name for folder in folders if folder.exists() or folder.is_symlink()]
    if present and not (output / DEMO_MARKER).is_file():
        raise OutputExists(
            f"{output} holds {', '.join(present)} that unet demo did not write, and the demo "
            "replaces them: give an empty or new folder (unet demo --output DIR)"
        )


def run_demo(output: Path, *, progress: bool = False, slide_side: int = SLIDE_SIDE) -> dict:
    """Generate inputs under ``output/images``, segment them into ``output/masks``, print a summary.

    Returns the foreground Dice of each image against its generated ground truth.
    """
    from flows.runner import run_segment
    from flows.settings import START_SERVER
    from unet.config import SegmentParameters
    from unet.sizes import shape_label, size_label

    images, truth, masks = output / "images", output / "truth", output / "masks"
    _check_own_folders(output, (images, truth, masks))
    output.mkdir(parents=True, exist_ok=True)
    (output / DEMO_MARKER).write_text(
        "written by unet demo, which replaces images/, truth/, masks/\n"
    )
    for folder in (images, truth, masks):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)

    started = time.perf_counter()
    _say(
        f"generating a {size_label(slide_side, slide_side)} nuclei slide and "
        f"{len(SMALL_IMAGES)} small images"
    )
    _write_slide(images / "slide.zarr", truth / "slide.zarr", slide_side)
    for seed, (name, shape) in enumerate(SMALL_IMAGES.items(), start=1):
        _write_small(images / name, truth / f"{Path(name).stem}.zarr", shape, seed)
    _say(f"generated in {time.perf_counter() - started:.0f} s; segmenting with the bundled model")

    reports = run_segment(
        str(images),
        str(masks),
        SegmentParameters(model="nuclei", precision="auto"),
        progress=progress,
    )
    scores = {}
    for report in reports:
        name = Path(report.output).stem
        scores[name] = _dice(Path(report.output), truth / f"{name}.zarr")
        _say(
            f"  {name}: {shape_label(report.shape)}, "
            f"{report.chunks_computed} chunk{'' if report.chunks_computed == 1 else 's'}, "
            f"{report.megapixels_per_second:.2f} Mpx/s, foreground Dice {scores[name]:.3f}"
        )
    _say(
        f"\ndone in {time.perf_counter() - started:.0f} s. Masks: {masks}/<name>.zarr "
        f"(OME-Zarr 0.5 labels), previews: {masks}/<name>.preview.png\n"
        "look at them:\n"
        f"  napari {images / 'slide.zarr'} {masks / 'slide.zarr'}   "
        "(pip install 'napari[all]' napari-ome-zarr)\n"
        f"  in the Prefect UI: {START_SERVER}, then in another shell\n"
        "  PREFECT_API_URL=http://127.0.0.1:4200/api make demo   and open http://127.0.0.1:4200\n"
        "  the repository's deployments (pipelines.yaml), started from that UI:\n"
        "  PREFECT_API_URL=http://127.0.0.1:4200/api .venv/bin/unet serve pipelines.yaml"
    )
    return scores


def _write_slide(image_url: Path, truth_url: Path, side: int) -> None:
    import zarr

    from unet.io.omezarr import create_image
    from unet.io.pyramid import build_pyramid
    from unet.training.synthetic import NucleiScene, write_to_zarr

    scene = NucleiScene(shape=(side, side), seed=2026)
    image = create_image(str(image_url), (1, side, side), "uint8", name="slide")
    labels = zarr.create_array(
        str(truth_url), shape=(side, side), chunks=(1024, 1024), dtype="int32", fill_value=0
    )
    write_to_zarr(scene, image, labels)
    build_pyramid(str(image_url), reduction="mean")


def _write_small(path: Path, truth_url: Path, shape: tuple[int, int], seed: int) -> None:
    import zarr
    from PIL import Image

    from unet.training.synthetic import nuclei_image

    image, labels = nuclei_image(shape, seed=seed)
    if path.suffix == ".tif":
        import tifffile

        tifffile.imwrite(path, image, tile=(256, 256))
    else:
        Image.fromarray(image).save(path)
    truth = zarr.create_array(
        str(truth_url), shape=labels.shape, dtype="int32", chunks=labels.shape
    )
    truth[...] = labels


def _dice(mask_url: Path, truth_url: Path) -> float:
    """Foreground Dice of a mask against instance labels, chunk row by chunk row."""
    import zarr

    mask = zarr.open_group(str(mask_url), mode="r")["0"]
    truth = zarr.open_array(str(truth_url), mode="r")
    step = mask.chunks[0]
    both = predicted = actual = 0
    for top in range(0, mask.shape[0], step):
        m = mask[top : top + step] > 0
        t = truth[top : top + step] > 0
        both += int((m & t).sum())
        predicted += int(m.sum())
        actual += int(t.sum())
    return 2 * both / (predicted + actual) if predicted + actual else 1.0


def _say(text: str) -> None:
    print(text, flush=True)
