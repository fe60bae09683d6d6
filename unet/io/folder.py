"""A folder of images: which files are images, and where each one's outputs go.

``OUTPUT/<name>.zarr`` is the mask of ``INPUT/<name>.<ext>``; images that are not Zarr are first
ingested into ``OUTPUT/_ingested/<name>.zarr`` (:func:`ingested_location`: one copy per mask).
Symbolic links that lead outside the folder are refused: a config naming a folder must not reach
files elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unet.errors import InputNotFound, UnsupportedInput

ZARR_SUFFIXES = (".zarr",)
INGEST_SUFFIXES = (".tif", ".tiff", ".svs", ".png", ".jpg", ".jpeg")
INGESTED_DIR = "_ingested"


@dataclass(frozen=True)
class FolderItem:
    """One image of a folder run."""

    source: Path
    name: str
    needs_ingest: bool

    def zarr_input(self, output_dir: Path) -> Path:
        """The Zarr image to segment: the source itself, or where it is ingested."""
        if self.needs_ingest:
            return Path(ingested_location(str(self.mask_output(output_dir))))
        return self.source

    def mask_output(self, output_dir: Path) -> Path:
        return output_dir / f"{self.name}.zarr"


def ingested_location(mask: str) -> str:
    """Where the image file segmented into the mask ``mask`` is ingested first: beside the mask,
    ``masks/a.zarr`` -> ``masks/_ingested/a.zarr``. One copy per mask, so that two files of one
    name segmented into two masks never share a copy (each copy also records its file:
    :func:`unet.io.ingest.is_current_copy`)."""
    if "://" in mask:
        parent, name = mask.rstrip("/").rsplit("/", 1)
        return f"{parent}/{INGESTED_DIR}/{name.removesuffix('.zarr')}.zarr"
    path = Path(mask)
    return str(path.parent / INGESTED_DIR / f"{path.name.removesuffix('.zarr')}.zarr")


def is_zarr_store(path: Path) -> bool:
    """Whether ``path`` is a local Zarr array or group (v2 or v3)."""
    return path.is_dir() and any(
        (path / marker).exists() for marker in ("zarr.json", ".zarray", ".zgroup")
    )


def list_images(folder: Path) -> list[FolderItem]:
    """The images directly inside ``folder``, sorted by name.

    Raises
    ------
    InputNotFound: the folder does not exist
    UnsupportedInput: a symlink leads outside the folder, or two images share a name
    """
    if not folder.is_dir():
        raise InputNotFound(f"folder {folder} does not exist: check the path")
    root = folder.resolve()
    items: dict[str, FolderItem] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        suffix = entry.suffix.lower()
        if suffix not in ZARR_SUFFIXES + INGEST_SUFFIXES:
            continue
        if entry.is_symlink() and root not in entry.resolve().parents:
            raise UnsupportedInput(
                f"{entry} links outside {folder} (to {entry.resolve()}): "
                "copy the image into the folder or remove the link"
            )
        item = FolderItem(source=entry, name=entry.stem, needs_ingest=suffix in INGEST_SUFFIXES)
        if item.name in items:
            raise UnsupportedInput(
                f"{items[item.name].source.name} and {entry.name} in {folder} would both write "
                f"{item.name}.zarr: rename one of them"
            )
        items[item.name] = item
    return list(items.values())
